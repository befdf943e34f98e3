"""Storage: tables, migrations and every SQL statement.  Imports nothing above it.

Loading the package declares every area's tables on the one ``metadata`` (in
dependency order), whichever module is imported first, so Alembic and
``metadata.sorted_tables`` always see all of them.
"""

from storage import (  # noqa: F401  (imported for their tables)
    schema,
    schema_bounces,
    schema_campaigns,
    schema_mailboxes,
    schema_sending,
    schema_syncs,
    schema_tracking,
    schema_web,
    schema_webhooks,
)
