"""Text bound for a terminal: names and messages from the database are data, not commands.

A queue named ``"\\x1b]0;pwned\\x07"`` or a task error carrying ANSI escapes
would otherwise retitle, recolour or rewrite the operator's terminal (OSC
and CSI sequences). Every string the CLI prints that came from a row, an
exception or an argument goes through ``safe`` first: control characters
(C0, DEL and C1, which include ESC and the 8-bit CSI) are shown as escapes,
so nothing in the output can steer the terminal and nothing is hidden.
"""

from __future__ import annotations

import re

# C0 controls except none (newline and tab included: a name has no business
# breaking a table row), DEL, and the C1 range. Unicode bidi overrides can
# reorder what a line seems to say, so they are shown too.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object) -> str:
    """``str(value)`` with every control character shown as an escape (``\\x1b``)."""
    return _CONTROL.sub(_escape, str(value))


def safe_lines(value: object) -> str:
    """Like ``safe``, but keeps newlines: for multi-line text such as a traceback."""
    return "\n".join(safe(line) for line in str(value).split("\n"))
