"""A small progress bar on stderr (a redrawn line on a terminal, one line per step otherwise)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, width: int = 24, stream=None):
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream or sys.stderr
        self.done, self.t0 = 0, time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self, what: str = "") -> None:
        self.done += 1
        filled = min(self.width, self.width * self.done // self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {self.done}/{self.total} {what} ({time.perf_counter() - self.t0:.0f} s)"
        if self.tty:
            end = "\n" if self.done >= self.total else ""
            self.stream.write("\r" + line.ljust(100) + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
