"""Progress of a long reconciliation on stderr: only on a terminal, redrawn at most ten times a second.

Counts only (pages, contacts, appointments): nothing about patients.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.label = ""
        self.total: int | None = None
        self.done = 0
        self._drawn = 0.0
        self._dirty = False

    def start(self, label: str, total: int | None) -> None:
        self._finish_line()
        self.label, self.total, self.done = label, total, 0
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self.done += count
        self._draw()

    def close(self) -> None:
        self._finish_line()

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.interval and (self.total is None or self.done < self.total):
            return
        self._drawn = now
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\r{self.label}: {self.done}{of}\x1b[K")
        self.stream.flush()
        self._dirty = True

    def _finish_line(self) -> None:
        if self.enabled and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
