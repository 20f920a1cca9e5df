"""Summaries of py-spy ``--format raw`` profiles (collapsed stacks: one
``frame;frame;...;leaf count`` per line, root first).

Frames look like ``function (path/to/file.py:123)``; the line number is
dropped so each function adds up to one entry.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3", "angela_queue/", "benchmarks/"):
        idx = path.find(marker)
        if idx >= 0:
            path = path[idx:]
            break
    return f"{m.group('func')} ({path})"


def summarize(path: Path, top: int = 20) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        count = int(m.group("count"))
        frames = [_frame_name(f) for f in m.group("stack").split(";") if f.strip()]
        if not frames:
            continue
        total += count
        # py-spy puts the thread/process as the first frame with some options; skip non-code frames.
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in c.most_common(top)] if total else []
    return {"file": str(path), "samples": total, "self_pct": pct(self_time), "inclusive_pct": pct(inclusive)}


def format_summary(summary: dict[str, Any], top: int = 15) -> str:
    lines = [f"{summary['file']}: {summary['samples']} samples"]
    lines.append("  self %   function")
    lines += [f"  {p:6.1f}   {name}" for name, p in summary["self_pct"][:top]]
    lines.append("  incl %   function")
    lines += [f"  {p:6.1f}   {name}" for name, p in summary["inclusive_pct"][:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(format_summary(summarize(Path(arg)), top=30))
