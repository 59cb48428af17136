"""SIGTERM as a cluster sends it (Slurm's scancel, a time limit, preemption): handled like Ctrl-C.

Training saves a checkpoint and the CLI exits 143 (130 after Ctrl-C). Training and the study runner share
this one handler and its flag; nothing else sets signal handlers.
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def deferred_interrupts():
    """Within the block (main thread), Ctrl-C and SIGTERM only *ask* to stop: :func:`raise_if_interrupted`
    raises at the next safe point (the training loop calls it after every step), so the interrupt can never
    land in a finaliser (where Python ignores it and the run would go on) or half-way through a step. A second
    Ctrl-C raises at once; a repeated SIGTERM changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        if signum == signal.SIGTERM:
            _state["terminated"] = True
            if _state.get("pending") is not None:  # a cluster repeats SIGTERM (scancel + the job script's
                return  # forward, torchrun's): the stop already asked for stands; it never tears a step
        if _state.get("pending") is not None:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        _state["pending"] = signum

    old = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["pending"] = None


def ignore_further() -> None:
    """From now on SIGINT and SIGTERM are ignored (main thread): the process is stopping and saving its last
    checkpoint and state, which a second signal must not cut short (the exit code still says which came)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        _state["pending"] = None


def note_saved(what: str) -> None:
    """What was saved on the way out (said on the CLI's one interrupt line)."""
    _state["saved"] = what


def saved() -> str | None:
    return _state.get("saved")


def interrupt_pending() -> bool:
    return _state.get("pending") is not None


def raise_interrupt() -> None:
    """Raise the held-back interrupt; SIGTERM's when this process got none (another DDP rank did)."""
    signum = _state.get("pending")
    signum = signal.SIGTERM if signum is None else signum
    _state["pending"] = None
    if signum == signal.SIGTERM:
        _state["terminated"] = True
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_interrupted() -> None:
    """Raise the interrupt :func:`deferred_interrupts` held back, if one arrived."""
    if interrupt_pending():
        raise_interrupt()


def report_interrupted() -> int:
    """Say how the process was stopped (on stderr): 143 after SIGTERM, 130 after Ctrl-C."""
    import sys

    what = saved()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it once (the others saved nothing)
        print(f"chexcut: {'terminated (SIGTERM)' if terminated() else 'interrupted'}" + (f": {what}" if what else ""),
              file=sys.stderr)
    return 143 if terminated() else 130
