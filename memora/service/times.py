"""Times as the tools show and take them: ISO 8601 text <-> milliseconds since the epoch."""

from __future__ import annotations

import datetime

from memora.core.errors import ValidationError


def time_ms(value: str | int | None, field: str) -> int | None:
    """Milliseconds since the epoch from ISO 8601 text (UTC unless it has a zone) or an int."""
    if value is None or isinstance(value, int):
        return value
    try:
        moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        message = f"{field} must be ISO 8601 (e.g. 2025-03-01T09:30:00Z) or ms since the epoch"
        raise ValidationError(message, field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def iso_time(ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds, `Z`-suffixed; None stays None."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
