"""One ingest path for mail from the SMTP dropbox and the IMAP poller.

``parse → dedupe → classify → match → create → file → emit``: each step is a
small function over a batch of :class:`~gateway.ingest.pipeline.Delivery`
objects; pure steps decide, the I/O steps are bulk statements, and the whole
batch commits once (SQLite has one writer; a commit per message halves
throughput).
"""
