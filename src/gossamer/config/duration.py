"""Duration strings of the resource model: ``250ms``, ``90s``, ``30m``, ``24h``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["duration_ms", "format_duration", "parse_duration"]

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_MILLISECOND = timedelta(milliseconds=1)


def parse_duration(text: str) -> timedelta:
    """Parse ``[Nd][Nh][Nm][Ns][Nms]`` (at least one part); raise ``ValueError`` otherwise
    (also for a duration too long to represent)."""
    match = _DURATION.match(text.strip()) if text else None
    if not text or match is None or not any(match.groups()):
        raise ValueError(
            f"invalid duration {text!r}: expected a number with unit d, h, m, s or ms "
            "(like 24h, 1h30m or 250ms)"
        )
    try:
        days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
        return timedelta(
            days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=millis
        )
    except (OverflowError, ValueError):  # beyond timedelta, or too many digits for int()
        raise ValueError(f"duration {text[:40]!r} is too long") from None


def duration_ms(text: str) -> int:
    """A duration string as whole milliseconds (the snapshot form)."""
    return parse_duration(text) // _MILLISECOND


def format_duration(value: timedelta) -> str:
    """The shortest ``[Nd][Nh][Nm][Ns][Nms]`` form of a whole-millisecond duration."""
    total = value // _MILLISECOND
    if total <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
