"""Run a chexcut model over a label table: uint8 batches -> device -> normalise -> sigmoid."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from chexcut.errors import ChexcutError


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ChexcutError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type not in ("cpu", "cuda"):  # meta, mps, xpu...: chexcut trains and evaluates on CPUs and CUDA GPUs
        raise ChexcutError(f"--device {device!r}: chexcut runs on cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChexcutError("--device cuda was asked for, but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ChexcutError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """bf16 | fp16 | fp32 for ``device``: ``None``/``auto`` picks the default; every check is here."""
    from chexcut.choices import Precision, check

    precision = check(Precision, precision or "auto", "--precision")
    if precision == "auto":
        return default_precision(device)
    if precision == "fp16" and device.type == "cpu":
        raise ChexcutError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved ``precision`` (bf16 | fp16 | fp32) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def default_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@torch.no_grad()
def predict(model, spec, loader, n: int, device: torch.device, precision: str = "fp32",
            channels_last: bool = False, progress=None) -> np.ndarray:
    """Probabilities (n, n_labels), float64, in the table's row order, from a loader of XrayBatches batches.

    Under bf16/fp16 autocast the head runs in float32 (see :func:`chexcut.models.surgery.float32_head`), so
    rounding does not create ties between scores."""
    model.eval()
    # results stay on the device until the end: no per-batch synchronisation, so the next batch's
    # host-to-device copy (pinned, non-blocking) overlaps this batch's compute
    # float64 sigmoid: in float32 every logit above ~16.6 becomes exactly 1.0 (ties); in float64 above ~36.7
    out = torch.zeros((n, len(spec.labels)), dtype=torch.float64, device=device)
    done = 0
    for images, _t, _m, rows in loader:
        x = spec.preprocess.normalise(images.to(device, non_blocking=True), channels_last)
        with autocast(device, precision):
            logits = model(x)
        out[rows.to(device, non_blocking=True)] = torch.sigmoid(logits.double())
        done += len(rows)
        if progress:
            progress(done, n)
    return out.cpu().numpy()
