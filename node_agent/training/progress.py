"""A small terminal progress bar (no extra dependency): one line rewritten in place on a TTY.

On a non-interactive stream (CI logs, the swarm launcher's pipes) it prints a full line every `every`
updates instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["ProgressBar"]


class ProgressBar:
    def __init__(self, total: int | None, stream: IO[str] | None = None, width: int = 30, every: int = 50):
        self.total = None if total is None else max(1, total)  # None: no end (a count, no bar)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.every = every
        self.started = time.monotonic()
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, **fields: float | int | str) -> None:
        if not self._interactive and done % self.every and done != self.total:
            return
        elapsed = time.monotonic() - self.started
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        if self.total is None:
            line = f"step {done} {elapsed:5.1f}s {extra}"
        else:
            filled = int(self.width * min(1.0, done / self.total))
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}]"
            line = f"{bar} {done}/{self.total} {elapsed:5.1f}s {extra}"
        if self._interactive:
            self.stream.write("\r" + line)
            if self.total is not None and done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
