"""JSON encoding for API answers: times ISO 8601, decimals as numbers."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def _default(o: Any) -> Any:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, default=_default, separators=(",", ":")).encode()
