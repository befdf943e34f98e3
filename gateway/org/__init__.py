"""Organizations, users, plans, dropbox addresses, allowed and shared senders."""
