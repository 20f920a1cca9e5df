"""Click parameter types shared by the commands."""

from __future__ import annotations

import re

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


class Duration(click.ParamType):
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` or plain seconds; as seconds (float)."""

    name = "duration"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION_RE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 30d, 12h, 15m, 90s or 2w", param, ctx)
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        if seconds >= 1e11:
            self.fail(f"{value!r} is too long a duration", param, ctx)
        return seconds


DURATION = Duration()
