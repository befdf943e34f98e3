"""What changed in a record: the ``changed`` field of ``record.*`` events, decided purely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storage.payloads import NOT_REPORTED


def changed_fields(
    before: Mapping[str, Any], after: Mapping[str, Any], keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """Fields (of ``keys``, default all of ``after``) whose value differs, with the new value."""
    return {
        k: after[k]
        for k in (after if keys is None else keys)
        if k not in NOT_REPORTED and k in after and before.get(k) != after[k]
    }


def deleted_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a delete event keeps: the last email, so a consumer can find its own copy."""
    return {"email": record.get("email")}
