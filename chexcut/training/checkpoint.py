"""A run's checkpoint (``last.ckpt``: a plain dict of tensors and strings, read without unpickling objects)
and its ``state.json``: everything ``--resume`` needs to continue bit-exactly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from chexcut.errors import ChexcutError
from chexcut.fileio import atomic_path, write_json


@dataclass
class RunState:
    """What a checkpoint restores besides tensors: how far the run got and its best validation."""

    step: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"mean_auroc": None, "step": None})


def load_checkpoint(path: Path) -> dict:
    """A run's last.ckpt: plain tensors and strings, read without unpickling objects."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        json.loads(ckpt["spec"]), int(ckpt["step"]), ckpt["model"], ckpt["optimizer"]
        return ckpt
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ChexcutError(f"{path} is damaged or not a chexcut checkpoint ({first}); start the run over with "
                           f"--force") from None


def save_checkpoint(s, status: str) -> None:
    """last.ckpt (atomically) and state.json of session ``s`` (:class:`chexcut.training.session.Session`)."""
    if not s.dist.main:
        return
    ckpt = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(), "step": s.state.step,
            "best": json.dumps(s.state.best), "spec": json.dumps(s.spec.to_json()), "rng_cpu": torch.get_rng_state()}
    if s.device.type == "cuda":
        ckpt["rng_cuda"] = torch.cuda.get_rng_state(s.device)
    try:
        with atomic_path(s.rd.last) as tmp:
            torch.save(ckpt, tmp)
    except RuntimeError as e:  # torch's zip writer hides the errno: "PytorchStreamWriter failed writing file"
        if "PytorchStreamWriter" not in str(e) and "file write failed" not in str(e):
            raise
        raise disk_error(s.rd.last, e) from None
    write_state(s, status)


def disk_error(path: Path, e: BaseException) -> OSError:
    """An OSError naming ``path`` for a write torch reported without its errno: ENOSPC when the file system is
    (nearly) full, EIO otherwise; the CLI turns both into one line."""
    import errno
    import os

    try:
        st = os.statvfs(Path(path).parent)
        full = st.f_bavail * st.f_frsize < 256 * 2**20
    except OSError:
        full = False
    first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
    return OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else first, str(path))


def restore(ckpt: dict, model, optimizer, scheduler, scaler, device: torch.device) -> RunState:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    return RunState(step=int(ckpt["step"]), best=json.loads(ckpt["best"]))


def write_state(s, status: str, **more) -> None:
    if s.dist.main:
        d = s.data
        write_json(s.rd.state, {"status": status, "step": s.state.step, "total_steps": d.total_steps,
                                "last_step": d.last_step, "epoch": s.state.step / d.steps_per_epoch,
                                "best": s.state.best, **more})
