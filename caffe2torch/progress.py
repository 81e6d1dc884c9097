"""Progress of a batch (deeplab-run, deeplab-eval), in a terminal and in a log.

One reporter, called by whatever runs the images (inline, a process pool, or any other executor):
`start(total)`, then `advance(done=1)` for each image that is FINISHED (its files written, its scores
counted; never when it is merely submitted), `advance(done=0, skipped=1)` for each image that failed, and
`close()`. On a terminal it draws a tqdm bar; otherwise (a log file, CI, a cluster job) it prints a plain
line every `interval` seconds and at every tenth of the work:

    segmenting: 30/60 images (50%), 3.9 images/s, ETA 8 s, 0 skipped

and a last line when it is closed. Images reused from an earlier run (`advance(reused=1)`) count as done but
not in the rate, so the ETA is that of the work left.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import TextIO

# Seconds between two plain lines at most (a line also comes at every tenth of the work).
DEFAULT_INTERVAL = 10.0
STEPS = 10
# The rate behind the ETA is measured over the last RECENT images finished (the first ones pay for starting
# worker processes and warming the net up, which the rest of the run does not).
RECENT = 20


def format_duration(seconds: float) -> str:
    """A short duration for humans: '0.4 s', '8 s', '3 min 20 s', '1 h 05 min'."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_rate(rate: float) -> str:
    """Three significant digits, never in scientific notation: '0.82', '3.9', '124'."""
    if rate >= 100:
        return f"{rate:.0f}"
    return f"{rate:.3g}" if rate >= 0.001 else "<0.001"


class Progress:
    """Counts finished, skipped and reused images and shows them (see the module's docstring).

    `stream` defaults to stderr; `tty` (default: whether the stream is a terminal) chooses the bar or plain
    lines; `clock` is replaceable for tests. Messages about single images go through `write`, which keeps
    the bar intact."""

    def __init__(self, desc: str, unit: str = "image", stream: TextIO | None = None, tty: bool | None = None,
                 interval: float = DEFAULT_INTERVAL, clock=time.monotonic):
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.interval = interval
        self.clock = clock
        self.total = 0
        self.done = self.skipped = self.reused = 0
        self.bar = None
        self.started_at = self.last_line_at = 0.0
        self.recent: deque[tuple[float, int]] = deque(maxlen=RECENT + 1)  # (time, images worked on)
        self.next_step = 0
        self.closed = False

    # -- the calls an executor makes ---------------------------------------------------------------------

    def start(self, total: int) -> Progress:
        self.total = total
        self.started_at = self.last_line_at = self.clock()
        self.recent.append((self.started_at, 0))
        self.next_step = 1
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.stream, dynamic_ncols=True)
        else:
            self._line(f"{self.desc}: {total} {self._units(total)} to do")
        return self

    def advance(self, done: int = 1, skipped: int = 0, reused: int = 0) -> None:
        """`done` images finished, `skipped` failed, `reused` taken from an earlier run (counted as done)."""
        self.done += done + reused
        self.skipped += skipped
        self.reused += reused
        if done + skipped:
            self.recent.append((self.clock(), self.processed - self.reused))
        if self.bar is not None:
            self.bar.update(done + skipped + reused)
            if self.skipped:
                self.bar.set_postfix_str(f"{self.skipped} skipped", refresh=False)
            return
        if self.tty or self.closed:
            return
        now = self.clock()
        step_reached = self.total and self.processed * STEPS >= self.next_step * self.total
        if step_reached or now - self.last_line_at >= self.interval:
            while self.total and self.processed * STEPS >= self.next_step * self.total:
                self.next_step += 1
            if self.processed < self.total:  # the last line is close()'s
                self._line(self.status(now))

    def write(self, message: str) -> None:
        """A message line (e.g. 'skipped: x.jpg: ...') that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.started_at:
            self._line(self.summary(self.clock()))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- what is shown -------------------------------------------------------------------------------------

    @property
    def processed(self) -> int:
        return self.done + self.skipped

    def rate(self, now: float) -> float | None:
        """Images per second over the work done in this run (reused images excluded); None before any."""
        worked = self.processed - self.reused
        elapsed = now - self.started_at
        return worked / elapsed if worked > 0 and elapsed > 0 else None

    def recent_rate(self, now: float) -> float | None:
        """Images per second over the last RECENT images worked on (all of them while fewer have finished)."""
        if len(self.recent) < 2:
            return self.rate(now)
        (then, before), (_, latest) = self.recent[0], self.recent[-1]
        return (latest - before) / (now - then) if latest > before and now > then else self.rate(now)

    def status(self, now: float) -> str:
        percent = math.floor(100 * self.processed / self.total) if self.total else 100
        parts = [f"{self.desc}: {self.processed}/{self.total} {self._units(self.total)} ({percent}%)"]
        if self.reused:
            parts[0] += f", {self.reused} from an earlier run"
        rate = self.recent_rate(now)
        if rate is None:
            parts += [f"- {self.unit}s/s", "ETA unknown"]
        else:
            parts += [f"{format_rate(rate)} {self.unit}s/s",
                      f"ETA {format_duration((self.total - self.processed) / rate)}"]
        parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)

    def summary(self, now: float) -> str:
        rate = self.rate(now)
        text = (f"{self.desc}: {self.processed}/{self.total} {self._units(self.total)} in "
                f"{format_duration(now - self.started_at)}")
        if rate is not None:
            text += f" ({format_rate(rate)} {self.unit}s/s)"
        if self.reused:
            text += f", {self.reused} from an earlier run"
        return text + f", {self.skipped} skipped"

    def _units(self, count: int) -> str:
        return self.unit if count == 1 else self.unit + "s"

    def _line(self, text: str) -> None:
        self.last_line_at = self.clock()
        print(text, file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Silent(Progress):
    """A reporter that shows nothing (library calls, tests): the same calls, the same counts."""

    def __init__(self, desc: str = "", unit: str = "image"):
        super().__init__(desc, unit, stream=None, tty=False)

    def start(self, total: int) -> Progress:
        self.total = total
        return self

    def advance(self, done: int = 1, skipped: int = 0, reused: int = 0) -> None:
        self.done += done + reused
        self.skipped += skipped
        self.reused += reused

    def write(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.closed = True
