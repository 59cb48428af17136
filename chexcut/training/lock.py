"""A run directory, claimed: the kernel lock that keeps two finetunes out of one folder, and the
checks (and cleaning) before a run starts in it."""

from __future__ import annotations

import os
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import TRAINING_FILES, RunDir


class RunLock:
    """``RUN_DIR/.lock``, held with a kernel lock (``fcntl.flock``) while a process trains into the folder.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a stale lock
    cannot outlive its owner and a reused pid cannot fake one. The pid in the file is for the message."""

    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        import fcntl

        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    pid = os.read(fd, 32).decode().strip() or "?"
                finally:
                    os.close(fd)
                raise ChexcutError(f"{self.path.parent} is in use by another finetune (pid {pid})") from None
            try:  # the file we locked must still be the one at the path (a releaser may have removed it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise ChexcutError(f"cannot lock {self.path.parent}")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing drops the kernel lock
            self.fd = None


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    rd = RunDir(run_dir)
    run_dir = rd.path
    if resume:
        if not rd.is_run():
            raise ChexcutError(f"--resume {run_dir}: no config.json there, not a finetune run")
        for stale in run_dir.glob(".*.tmp"):  # half-written files of a killed process (never the real names)
            stale.unlink(missing_ok=True)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ChexcutError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        state = rd.read_state()
        if not force:
            what = f"a {state['status']} run" if state.get("status") else "files"
            raise ChexcutError(f"--out {run_dir} already holds {what}; pass --force to start over, "
                               f"or --resume {run_dir} to continue")
        lock = RunLock(run_dir)
        lock.acquire()  # refuses a folder in use, even with --force
        lock.release()
        for name in TRAINING_FILES:
            (rd / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChexcutError(f"cannot create --out {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise ChexcutError(f"--out {run_dir} is not writable")
