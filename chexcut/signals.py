"""SIGTERM as a cluster sends it (Slurm's scancel, a time limit, preemption): handled like Ctrl-C.

Training saves a checkpoint and the CLI exits 143 (130 after Ctrl-C). Training and the study runner share
this one handler and its flag; nothing else sets signal handlers.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"terminated": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (checkpoints are saved on the way out)."""


def terminated() -> bool:
    """Whether SIGTERM interrupted this process (wrappers such as click re-raise interrupts as their own type)."""
    return _state["terminated"]


def on_sigterm(signum, frame):
    _state["terminated"] = True
    raise Terminated()


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
