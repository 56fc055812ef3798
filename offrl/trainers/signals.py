"""Ctrl-C / SIGTERM for a training loop: the first signal asks for a clean stop (a checkpoint, then
return), a second one aborts with ``KeyboardInterrupt``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["install_stop_handlers"]


def install_stop_handlers(request_stop: Callable[[str], None],
                          stopping: Callable[[], bool]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``request_stop(signal name)``; while ``stopping()`` a signal aborts instead.

    Returns the function that puts the previous handlers back (a no-op outside the main thread, where
    Python cannot install handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if stopping():  # the second Ctrl-C: give up now
            for sig, old in previous.items():
                signal.signal(sig, old)
            raise KeyboardInterrupt
        request_stop(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
