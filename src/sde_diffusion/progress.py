"""Progress for long work: a live bar on a terminal, a log line every few seconds anywhere else.

tqdm redraws its bar with carriage returns, which a log file or a pipe receives as thousands of lines; when standard
error is not a terminal, `progress_bar` logs a short line through the `sde_diffusion` logger instead, at most every
`interval` seconds and once at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("sde_diffusion")


class LogProgress:
    """The part of tqdm's interface the project uses (`update`, `set_postfix`, `close`, `n`), as periodic log lines."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, interval: float = 10.0):
        self.total, self.desc, self.unit, self.n, self.interval = total, desc, unit, initial, interval
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.perf_counter()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self._last >= self.interval:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def _emit(self) -> None:
        self._last = time.perf_counter()
        done = f"{self.n}/{self.total} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        log.info("%s: %s%s, %.1f s", self.desc, done, extra, self._last - self._start)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit()


def progress_bar(total: int, desc: str, unit: str = "step", initial: int = 0, leave: bool = True, stream=None):
    """tqdm on a terminal, `LogProgress` otherwise (`stream`: where the bar would go, standard error by default)."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial)
