"""Clean interruption of training: SIGINT (Ctrl-C) and SIGTERM end the run between two steps.

While `StopSignals` is active, the first SIGINT or SIGTERM only sets a flag; the trainer finishes the step it is in,
writes a checkpoint and raises `TrainingInterrupted`, which carries the step and the checkpoint to resume from. The
first signal also puts the previous handlers back, so a second one interrupts at once (a checkpoint being written
is then abandoned, and the previous one stays: writes are atomic). Handlers can only be set from the main thread;
elsewhere, and under torchrun (every rank would have to stop at the same step), signals keep their usual effect.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal after step `step`; `checkpoint` is the file to resume from (or None)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint_dir, nothing saved"
        super().__init__(f"{name} received: training stopped after step {step}; {saved}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """Context manager: `received` is the first signal number caught while inside, or None."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        self._restore()  # a second signal acts as it would have without us

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            self._previous = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
