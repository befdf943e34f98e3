"""Consumers of the event log, run by ``serve --only sync``.

:data:`CONSUMERS` lists them: :class:`gateway.runner.LoopRunner` classes, each
with its own ``name``, built as ``cls(db, clock=clock)``.
"""

CONSUMERS: tuple[type, ...] = ()
