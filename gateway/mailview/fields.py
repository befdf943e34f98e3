"""The header fields of a filed email, as every API answer about it shows them.

A record's list (``GET /api/v1/{module}/{id}/emails``) and one email
(``GET /api/v1/emails/{id}``) both start with these fields, in this order, from
the stored ``messages`` row; each adds its own after them (the list: the send's
status, the owner, seen, filed at; the email: records, bodies, attachments).
One builder, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.mailview.parts import clean_text
from gateway.receive.mailboxes import sharing


def header_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """``id`` … ``shared`` of a stored message: subject and sender name decoded at filing,
    with U+FFFD for a lone surrogate (none survives storage; the guard is for any JSON
    encoder), addresses as stored (normalised), ``crm_sent`` from the source."""
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "subject": clean_text(row["subject"]),
        "from": row["from_addr"],
        "from_name": clean_text(row["from_name"]),
        "to": [a["email"] for a in row["to_addrs"]],
        "cc": [a["email"] for a in row["cc_addrs"]],
        "date": row["date"],
        "direction": row["direction"],
        "source": row["source"],
        "crm_sent": sharing.is_crm_sent(row["source"]),
        "shared": row["shared"],
    }
