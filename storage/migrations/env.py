"""Alembic environment: runs migrations on the connection handed in by ``storage.migrate``."""

from __future__ import annotations

from alembic import context

from storage.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
