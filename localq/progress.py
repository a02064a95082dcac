"""A progress line on stderr for long maps: done/total, rate, time left, failures.

On a terminal the line is redrawn in place (``\\r`` and erase-line) about ten
times a second. Anywhere else (a pipe, a file, a CI log) a plain line is
written when the map starts and then every ``PLAIN_EVERY`` seconds, so a log
does not fill up. Either way the last line is written when the map ends, and
on success it holds ``N/N``. No dependency.

The rate and the time left count only the items computed by this run: the
results a resumed map found stored are shown as ``reused`` instead.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY = 5.0     # seconds between lines when stderr is not a terminal
TTY_EVERY = 0.1       # seconds between redraws on a terminal


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, label: str = "map") -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.label = label
        self.start = time.monotonic()
        self.last_draw: float | None = None
        self.last_text = ""
        self.base = 0           # items found done at the start (a resumed map)
        self.closed = False

    def reused(self, count: int) -> None:
        """``count`` results were found stored: do not count them in the rate."""
        self.base = count

    def line(self, done: int, failures: int) -> str:
        elapsed = time.monotonic() - self.start
        computed = done - self.base
        rate = computed / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * done / self.total if self.total else 100.0
        if done >= self.total:
            left: float | None = 0.0
        else:
            left = (self.total - done) / rate if rate > 0 else None
        parts = [f"{self.label} {done}/{self.total} ({pct:.0f}%)",
                 f"{_rate(rate)}/s", f"elapsed {_span(elapsed)}",
                 f"left {'?' if left is None else _span(left)}"]
        if self.base:
            parts.append(f"reused {self.base}")
        if failures:
            parts.append(f"failed {failures}")
        return "  ".join(parts)

    def update(self, done: int, failures: int = 0) -> None:
        now = time.monotonic()
        every = TTY_EVERY if self.tty else PLAIN_EVERY
        if self.last_draw is not None and now - self.last_draw < every:
            return
        self.last_draw = now
        self._write(self.line(done, failures), final=False)

    def close(self, done: int, failures: int = 0) -> None:
        """Write the last line (``N/N`` when every item is done)."""
        if self.closed:
            return
        self.closed = True
        text = self.line(done, failures)
        if not self.tty and text == self.last_text:
            return            # that very line is the last one already
        self._write(text, final=True)

    def _write(self, text: str, final: bool) -> None:
        self.last_text = text
        try:
            if self.tty:
                self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass      # stderr closed or gone: progress is never worth a failure


def _rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}"


def _span(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
