"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, stop."""

from __future__ import annotations

import signal
from contextlib import contextmanager

from sslkit import console


@contextmanager
def stop_signals():
    """SIGINT / SIGTERM ask the loop to checkpoint and stop at the next step; a second Ctrl-C aborts at once.

    Yields ``{"signal": 0}``, whose value becomes the number of the signal received."""
    stop = {"signal": 0}
    handled = (signal.SIGINT, signal.SIGTERM)

    def handler(signum, frame):
        if stop["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["signal"] = signum
        console.info("stopping: writing a checkpoint after this step (Ctrl-C again to abort without one)")

    try:
        previous = {s: signal.signal(s, handler) for s in handled}
    except ValueError:  # not the main thread (e.g. some notebooks): no signal handling
        yield stop
        return
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def exit_code(signum: int) -> int:
    """The shell's exit code for a process stopped by ``signum`` (0: none seen, counted as SIGTERM)."""
    return 128 + (signum or signal.SIGTERM)
