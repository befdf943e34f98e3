"""One ingest path for mail from the SMTP dropbox and the IMAP poller.

Receivers store raw mail durably in the spool (:mod:`gateway.ingest.spool`) and
answer; the :class:`~gateway.ingest.runner.IngestRunner` files it afterwards by
running the declared pipeline (:mod:`gateway.ingest.pipeline`: parse,
authorise, dedupe, classify, match, create, file, replies, emit — one module
per step under :mod:`gateway.ingest.steps`).
"""
