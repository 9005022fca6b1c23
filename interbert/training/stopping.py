"""SIGTERM / SIGINT become a request to stop at the next optimizer-step boundary.

A ZeRO checkpoint is collective (every rank writes its optimizer partition), so a rank that
was signalled does not stop alone: the training loop sums the request over ranks at every
step and all ranks stop, save and exit together. The DeepSpeed launcher forwards SIGTERM to
every rank and kills them 30 s later, which is the budget for that save.
"""
from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, Any] = {}  # the handlers that install replaced

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopRequest:
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def request(self, reason: str) -> None:
        """A stop for another reason than a signal (e.g. the launcher is gone), said in the log."""
        if self.signal_name is None:
            self.signal_name = reason

    def _handle(self, number, frame) -> None:
        if self.signal_name is not None and number == signal.SIGINT:
            # A second Ctrl-C means "now": give up on the clean stop.
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start-up: leave SIGTERM / SIGINT to the training process, which stops
    at a step boundary; a worker killed by them would abort the clean stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
