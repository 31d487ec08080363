"""A one-line progress bar for training: step, loss, BPC or perplexity, items/s, ETA.

On a terminal it redraws one line on stderr; elsewhere (a log file, CI) it writes a plain
line on each update instead. ``quiet`` turns the bar off; :meth:`Progress.write` lines
(validation, samples, messages) always go to stdout.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_rate(per_second: float) -> str:
    return f"{per_second / 1e3:.1f}k" if per_second >= 1e3 else f"{per_second:.0f}"


class Progress:
    def __init__(self, total: int, *, start: int = 0, quiet: bool = False,
                 bar: TextIO | None = None, out: TextIO | None = None, width: int = 24,
                 unit: str = "tok"):
        self.total, self.start, self.quiet, self.width = total, start, quiet, width
        self.unit = unit                     # what the rate counts: tok, windows, seqs
        self.bar = bar if bar is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.tty = hasattr(self.bar, "isatty") and self.bar.isatty()
        self.t0 = time.perf_counter()
        self._shown = False

    def line(self, step: int, per_second: float, **metrics: float) -> str:
        done = step / self.total
        filled = int(self.width * done)
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        values = " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        eta_text = format_duration(eta) if eta == eta else "?"
        return (f"step {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done:4.0%} {values} | {format_rate(per_second)} {self.unit}/s "
                f"| ETA {eta_text}")

    def update(self, step: int, per_second: float, **metrics: float) -> None:
        if self.quiet:
            return
        text = self.line(step, per_second, **metrics)
        if self.tty:
            self.bar.write("\r\033[K" + text)
            self._shown = True
        else:
            self.bar.write(text + "\n")
        self.bar.flush()

    def write(self, text: str) -> None:
        """Print a line above the bar."""
        if self._shown:
            self.bar.write("\r\033[K")
            self.bar.flush()
            self._shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._shown:
            self.bar.write("\n")
            self.bar.flush()
            self._shown = False
