"""Progress output that suits where it goes: a live tqdm bar on a terminal; in a log file, a pipe or a cluster
job's output, one plain line every ~10 % of the work or every minute, whichever comes first, so logs do not fill
with redraws. Every progress display in the package comes from `progress_bar`."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_S = 60.0


def progress_bar(
    iterable=None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    file=None,
):
    """A tqdm-like progress display (iterate it, or call update/set_postfix/set_postfix_str/write/close)."""
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True, file=stream
        )
    return LogProgress(iterable, total, desc, unit, initial, stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Progress as log lines: `desc: 40% 400/1000 step [1:02, 6.4 step/s] postfix`."""

    def __init__(self, iterable, total: int | None, desc: str, unit: str, initial: int, stream):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.stream = iterable, total, desc, unit, stream
        self.n, self.initial, self.postfix = initial, initial, ""
        self.start = self.last_time = time.monotonic()
        self.last_fraction = self._fraction()
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def _fraction(self) -> float | None:
        return self.n / self.total if self.total else None

    def update(self, n: int = 1) -> None:
        self.n += n
        now, fraction = time.monotonic(), self._fraction()
        step_done = fraction is not None and fraction >= self.last_fraction + LINE_EVERY_FRACTION - 1e-12
        if step_done or now - self.last_time >= LINE_EVERY_S:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0  # this session's pace
        done = f"{100 * self.n / self.total:3.0f}% {self.n}/{self.total}" if self.total else f"{self.n}"
        minutes, seconds = divmod(int(elapsed), 60)
        tail = f" {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {done} {self.unit} [{minutes}:{seconds:02d}, {rate:.3g} {self.unit}/s]{tail}",
            file=self.stream,
        )
        self.stream.flush()
        self.last_time, self.last_fraction = now, self._fraction() or 0.0

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def write(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed and self.n and self._fraction() != self.last_fraction:
            self._line(time.monotonic())  # the final count, unless the last line already said it
        self.closed = True
