"""A progress line on stderr for long maps: done/total, rate, time left, failures.

Redrawn in place on a terminal; a plain line every few seconds otherwise
(a pipe, a CI log); always a last line that holds ``N/N``. No dependency.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY = 5.0     # seconds between lines when stderr is not a terminal
TTY_EVERY = 0.1


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.closed = False

    def line(self, done: int, failures: int) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else None
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = "-" if left is None else _span(left)
        text = (f"{done}/{self.total} ({pct:.0f}%)  {rate:,.0f}/s  elapsed {_span(elapsed)}"
                f"  left {eta}")
        if failures:
            text += f"  failed {failures}"
        return text

    def update(self, done: int, failures: int) -> None:
        now = time.monotonic()
        every = TTY_EVERY if self.tty else PLAIN_EVERY
        if now - self.last_draw < every:
            return
        self.last_draw = now
        self._write(self.line(done, failures), final=False)

    def close(self, done: int, failures: int) -> None:
        if self.closed:
            return
        self.closed = True
        self._write(self.line(done, failures), final=True)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _span(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
