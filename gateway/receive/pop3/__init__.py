"""The POP3 poller's mailbox layer: list by UIDL, retrieve, never delete.

Entry points: :func:`connect` → :class:`PopSession` (``list_messages``,
``retrieve``, ``quit``).  Config and errors are the IMAP layer's
(:class:`~gateway.receive.imap.client.MailboxConfig`,
:class:`~gateway.receive.imap.client.MailboxError`): the mailbox service speaks
one error language whatever the protocol.  What is new is decided by the caller
(``gateway.receive.mailboxes.pop3_source``) from the UIDLs it stored.
"""

from gateway.receive.pop3.client import Listed, PopSession, TooLarge, connect, merge_listing

__all__ = ["Listed", "PopSession", "TooLarge", "connect", "merge_listing"]
