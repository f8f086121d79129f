"""Go durations as Consul reads and writes them: ``time.ParseDuration`` (``wait``, session
``TTL`` and ``LockDelay``) and ``time.Duration.String`` (the TTL bounds in its errors)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["NS_PER_S", "format_go_duration", "parse_go_duration"]

NS_PER_S = 1_000_000_000


_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration ("15s", "1m30s", "250ms") into nanoseconds, like time.ParseDuration."""
    invalid = ValueError(f'time: invalid duration "{text}"')
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = Decimal(0)
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise invalid
        number, unit = match.groups()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        try:
            total += Decimal(number) * _UNITS_NS[unit]
        except InvalidOperation as exc:
            raise invalid from exc
        pos = match.end()
    return sign * int(total)


def format_go_duration(ns: int) -> str:
    """Format nanoseconds the way Go's time.Duration.String does ("10s", "24h0m0s", "1.5ms")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < NS_PER_S:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000)):
            if ns >= size:
                return sign + _trim(Decimal(ns) / size) + unit
        return f"{sign}{ns}ns"
    hours, rem = divmod(ns, 3600 * NS_PER_S)
    minutes, rem = divmod(rem, 60 * NS_PER_S)
    seconds = _trim(Decimal(rem) / NS_PER_S) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
