"""Progress of the long steps: one helper, so that dataset generation, demo training, weight
conversion, downloads, the prediction pass and the robustness grid all report alike.

``with step("demo_training", "training the demo model", total=400, unit="steps") as bar:``
then ``bar.advance()`` (or ``bar.update(done, total)``). Where the lines go is set by whoever
runs the steps (:func:`activate`): the pytest session points it at the terminal, the CLI at
stderr. On a live terminal a step redraws one line (count, rate, time left); in logs (not a
terminal) and under ``-q`` it writes one line when it ends, and only if it took at least
:data:`QUIET_BELOW_S`. Every step's seconds are added to the active :class:`Display` under its
key, which the session copies into the JSON report's ``timing``. With nothing active (library
use) steps cost nothing and write nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

QUIET_BELOW_S = 1.0    # a step this short writes no line in logs (it was not a silent wait)
REDRAW_EVERY_S = 0.25  # live-terminal redraw interval
LIVE_AFTER_S = 0.5     # a live line appears only once a step has run this long


@dataclass(eq=False)  # identity: activate/deactivate find this very display
class Display:
    """Where progress goes: ``line`` writes a finished line; ``redraw`` (None when the output is
    not a live terminal, or is quiet) replaces the current line in place."""

    line: Callable[[str], None]
    redraw: Callable[[str], None] | None = None
    prefix: str = "unsafebench: "
    seconds: dict[str, float] = field(default_factory=dict)  # step key -> total seconds
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_time(self, key: str, seconds: float) -> None:
        with self.lock:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def timing(self) -> dict[str, float]:
        """The steps' seconds as flat ``<key>_seconds`` entries for the report's ``timing``."""
        with self.lock:
            return {f"{k}_seconds": round(v, 3) for k, v in sorted(self.seconds.items())}


_active: list[Display] = []


def activate(display: Display) -> None:
    _active.append(display)


def deactivate(display: Display) -> None:
    if display in _active:
        _active.remove(display)


def active() -> Display | None:
    return _active[-1] if _active else None


class Bar:
    """One running step. ``note`` is appended to its final line (e.g. what was skipped)."""

    def __init__(self, key: str, label: str, total: int | None, unit: str,
                 display: Display | None) -> None:
        self.key, self.label, self.total, self.unit, self.display = key, label, total, unit, display
        self.done = 0
        self.note = ""
        self.started = time.perf_counter()
        self._drawn = 0.0
        self._live = False

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        d = self.display
        if d is None or d.redraw is None:
            return
        now = time.perf_counter()
        if now - self.started < LIVE_AFTER_S or now - self._drawn < REDRAW_EVERY_S:
            return
        self._drawn = now
        self._live = True
        d.redraw(d.prefix + self.live_text(now - self.started))

    def live_text(self, elapsed: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if not self.total:
            count = f"{self.done}{unit}" if self.done else "working"
            return f"{self.label}: {count}, {_duration(elapsed)}"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f", ~{_duration(left)} left" if left is not None else ""
        return (f"{self.label}: {self.done}/{self.total}{unit} "
                f"({100 * self.done / self.total:.0f}%, {_rate(rate, self.unit)}{eta})")

    def final_text(self, elapsed: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        count = f"{self.done}{unit} " if self.done or self.total else "done "
        rate = (f", {_rate(self.done / elapsed, self.unit)}"
                if self.done and elapsed > 0 and self.unit else "")
        note = f"; {self.note}" if self.note else ""
        return f"{self.label}: {count}in {_duration(elapsed)}{rate}{note}"

    def finish(self, failed: bool) -> None:
        elapsed = time.perf_counter() - self.started
        d = self.display
        if d is None:
            return
        d.add_time(self.key, elapsed)
        if failed and not self.note:
            self.note = "stopped by an error"
        if self._live or elapsed >= QUIET_BELOW_S or (failed and d.redraw is not None):
            d.line(d.prefix + self.final_text(elapsed))


@contextmanager
def step(key: str, label: str, total: int | None = None, unit: str = "") -> Iterator[Bar]:
    """Time and show one long step; ``key`` names its entry in the report's timing."""
    bar = Bar(key, label, total, unit, active())
    failed = True
    try:
        yield bar
        failed = False
    finally:
        bar.finish(failed)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _rate(per_second: float, unit: str) -> str:
    unit = unit or "items"
    return f"{per_second:.1f} {unit}/s" if per_second < 10 else f"{per_second:.0f} {unit}/s"


def stderr_display() -> Display:
    """For the CLI: live on a terminal, one line per step otherwise."""
    import sys

    def line(text: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[2K")
        print(text, file=sys.stderr, flush=True)

    def redraw(text: str) -> None:
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()

    return Display(line, redraw if sys.stderr.isatty() else None)
