"""How mail reaches us: the SMTP dropbox/bounce receiver and polled mailboxes.

Receivers only make mail durable (raw bytes + envelope) and hand it to the
ingest runner; nothing here matches CRM records or classifies.
"""
