"""Tables of the web dashboard: login sessions and failed logins (migration 0014).

A session row holds a SHA-256 of the cookie's token, never the token: a
database dump does not log anyone in.  Failed logins are rows rather than a
counter in memory so that the rate limit holds across HTTP processes.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table

from storage.schema import metadata
from storage.types import ID, UTCDateTime, utcnow

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The CSRF token every form of this session carries (synchroniser token pattern).
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_web_sessions_user", "user_id"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", ID, primary_key=True),
    Column("email_norm", String(320), nullable=False),
    Column("client", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Index("ix_login_failures_email_at", "email_norm", "at"),
    Index("ix_login_failures_client_at", "client", "at"),
)
