"""The ingest steps, one module each, every one ``run(conn, batch) -> Flow``.

:data:`gateway.ingest.pipeline.PIPELINE` puts them in the order they run.
"""
