"""Fine-tuning, readable top to bottom: :func:`finetune` (signals, lock) -> :func:`train_loop` (forward,
masked BCE, backward, step; log, validate, checkpoint) with :func:`validate` and :func:`keep_if_best`.

One process per GPU under ``torchrun`` (DDP; rank 0 alone logs and writes), or a single process on one
GPU or the CPU. On CPU with a fixed seed, N steps straight and k steps + interruption + resume give the
same bits: batches are a pure function of (seed, epoch), and the RNG state is checkpointed."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chexcut import events
from chexcut.errors import ChexcutError
from chexcut.signals import (
    deferred_interrupts,
    ignore_further,
    interrupt_pending,
    note_saved,
    raise_if_interrupted,
    raise_interrupt,
    sigterm_interrupts,
)
from chexcut.training.adapt import train_mode
from chexcut.training.batchnorm import precise_bn
from chexcut.training.checkpoint import save_checkpoint, write_state
from chexcut.training.config import Run
from chexcut.training.distributed import any_rank, barrier, init_distributed, shutdown
from chexcut.training.lock import RunLock, prepare_run_dir
from chexcut.training.session import Session, build_session


def finetune(run: Run, emit=None) -> dict:
    """Train ``run``; returns the final state. ``emit(event)`` receives its :mod:`chexcut.events`
    (Start, Log, End; rank 0)."""
    from chexcut.models.infer import pick_device

    emit = emit or (lambda event: None)
    device = pick_device(run.cfg.device)
    dist = init_distributed(device.type)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    lock = RunLock(Path(run.run_dir))
    tracker = session = None
    created = dist.main and not Path(run.run_dir).exists()  # a folder this call makes: removed if nothing started
    try:
        with sigterm_interrupts():
            if dist.main:
                prepare_run_dir(Path(run.run_dir), run.resume, run.force)
                lock.acquire()
                if run.track is not None:  # after --force cleared the folder: a new MLflow run, else the same
                    from chexcut.tracking import Tracker

                    tracker = Tracker(run.track, run.run_dir).start()
                    emit = tracker.emitter(emit)
            barrier(dist)
            session = build_session(run, emit if dist.main else (lambda event: None), device, dist)
            with deferred_interrupts():
                result = train_loop(session)
                raise_if_interrupted()  # asked to stop as the last step finished: the run is done, say so anyway
            return result
    except BaseException as e:
        if tracker is not None:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if session is not None:
            from chexcut.data.batches import stop_workers

            stop_workers(session.loader, session.val_loader)
        lock.release()
        if created and session is None:  # refused before training (bad data, a bad size): leave no empty folder
            with contextlib.suppress(OSError):
                Path(run.run_dir).rmdir()
        shutdown(dist)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (AMP-safe) averaged over the labels that count."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def train_loop(s: Session) -> dict:
    """Steps until ``last_step``: forward, masked BCE, backward, step; log, validate, checkpoint.

    The loss stays on the device between log rows (no per-step synchronisation): its running sum and the
    first non-finite step are read at log and validation steps, before anything is checkpointed."""
    from chexcut.data.batches import batch_order
    from chexcut.models.infer import autocast

    cfg, d, st, device = s.cfg, s.data, s.state, s.device
    write_state(s, "running")
    s.emit(events.Start(step=st.step, last_step=d.last_step, steps_per_epoch=d.steps_per_epoch,
                        train_images=len(d.train), valid_images=len(d.valid), device=str(device),
                        precision=s.precision, cached=d.cache is not None, notes=s.notes))
    meter = ThroughputMeter(device)
    try:
        while st.step < d.last_step:
            epoch, within = divmod(st.step, d.steps_per_epoch)
            s.sampler.batches = batch_order(len(d.train_ds), cfg.batch_size, True, cfg.seed, epoch, True,
                                            s.dist.rank, s.dist.world)[within:]
            train_mode(s.train_model)
            for images, targets, mask, _rows in s.loader:
                x = s.spec.preprocess.normalise(images.to(device, non_blocking=True), s.channels_last)
                with autocast(device, s.precision):
                    logits = s.train_model(x)
                loss = masked_bce(logits, targets.to(device, non_blocking=True), mask.to(device, non_blocking=True))
                s.optimizer.zero_grad(set_to_none=True)
                s.scaler.scale(loss).backward()
                s.scaler.step(s.optimizer)
                s.scaler.update()
                s.scheduler.step()
                st.step += 1
                meter.add(loss.detach(), len(images) * s.dist.world, st.step)
                validate_now = (st.step % cfg.val_every == 0 or st.step % d.steps_per_epoch == 0
                                or st.step == d.last_step)
                if st.step % cfg.log_every == 0 or validate_now:
                    log_and_validate(s, meter, validate_now)
                if any_rank(s.dist, interrupt_pending()):  # a signal stops every rank here, at this one step
                    raise_interrupt()
                if st.step >= d.last_step:
                    break
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated): a second signal must not cut this save short
        ignore_further()
        save_checkpoint(s, "interrupted")
        if s.dist.main:
            note_saved(f"checkpoint at step {s.state.step} in {s.rd}; continue with: chexcut finetune --resume {s.rd}")
        raise
    except torch.cuda.OutOfMemoryError:  # before BaseException: the advice is the user's to act on
        _stopped(s, "CUDA out of memory")
        raise ChexcutError(f"CUDA out of memory at --batch-size {cfg.batch_size}; try --batch-size "
                           f"{max(1, cfg.batch_size // 2)} (the last checkpoint is kept in {s.rd})") from None
    except BaseException as e:  # a full disk, a bug: say so in state.json instead of leaving "running"
        if not isinstance(e, ChexcutError):
            _stopped(s, f"{type(e).__name__}: {str(e)[:200]}")
        raise
    return finish(s)


def log_and_validate(s: Session, meter: "ThroughputMeter", validate_now: bool) -> None:
    """A metrics row at a log step: the loss since the last row (checked finite), and at validation steps
    precise BN, the validation AUROCs, the best model and a checkpoint."""
    bad = meter.first_non_finite()
    if bad is not None:
        step, value = bad
        write_state(s, "stopped", reason=f"non-finite loss at step {step}")
        raise ChexcutError(f"training loss became {value} at step {step}; stopped. The last good checkpoint is "
                           f"kept in {s.rd} (try a lower --lr)")
    row = meter.row(s)
    if validate_now:
        precise_bn(s)
        result = validate(s)
        keep_if_best(s, result)
        row["val_mean_auroc"] = result["mean_auroc"]
        row.update({f"auroc:{k}": v for k, v in result["aurocs"].items()})
        save_checkpoint(s, "running")
        train_mode(s.train_model)
    log_row(s, row)
    meter.restart()


def finish(s: Session) -> dict:
    st = s.state
    status = "finished" if st.step >= s.data.total_steps else "paused"
    save_checkpoint(s, status)
    if st.best["mean_auroc"] is None and s.dist.main:  # finished, and say why there is no best model
        write_state(s, status, reason="no label was evaluable on the validation set (each had one class): "
                                      "no best model was saved")
    s.emit(events.End(status=status, step=st.step, best=st.best))
    return {"status": status, "step": st.step, "best": st.best, "run_dir": str(s.rd)}


def _stopped(s: Session, reason: str) -> None:
    if s.dist.main:
        try:
            write_state(s, "stopped", reason=reason)
        except OSError:
            pass


def validate(s: Session) -> dict:
    """Per-label validation AUROCs (the same function as ``chexcut evaluate``) and their competition mean."""
    from chexcut.evaluation.evaluate import competition_mean, label_aurocs
    from chexcut.models.infer import predict

    n = len(s.data.valid_ds)
    probs = predict(s.model, s.spec, s.val_loader, n, s.device, s.precision, s.channels_last)
    if s.dist.world > 1:
        import torch.distributed as tdist

        parts = [None] * s.dist.world
        tdist.all_gather_object(parts, probs[s.val_shard])
        for r, part in enumerate(parts):
            probs[np.arange(n)[r::s.dist.world]] = part
    valid = s.data.valid
    auc = label_aurocs(valid.targets, valid.mask > 0, probs)
    aurocs = {name: (float(a) if np.isfinite(a) else None) for name, a in zip(s.labels, auc)}
    return {"aurocs": aurocs, "mean_auroc": competition_mean(s.labels, auc), "probs": probs}


def keep_if_best(s: Session, result: dict) -> None:
    """Rank 0 writes best.safetensors and valid_predictions.csv when the validation improved."""
    from chexcut.evaluation.predictions import write_predictions
    from chexcut.models import modelfile
    from chexcut.training.lora import merged

    score = result["mean_auroc"]
    if score is None:  # no competition label evaluable: fall back to every evaluable label
        vals = [v for v in result["aurocs"].values() if v is not None]
        score = float(np.mean(vals)) if vals else None
    best = s.state.best
    if score is None or (best["mean_auroc"] is not None and score <= best["mean_auroc"]):
        return
    s.state.best = {"mean_auroc": score, "step": s.state.step, "aurocs": result["aurocs"]}
    if s.dist.main:
        # the session's spec carries the preprocessing this run trained (and validated) with
        out_spec = dataclasses.replace(s.spec, training={"run_dir": str(s.rd), "step": s.state.step,
                                                         "valid_mean_auroc": score})
        modelfile.save_model(merged(s.model), s.rd.best, spec=out_spec)  # lora:R: the weights with LoRA folded in
        write_predictions(s.rd.valid_predictions, s.data.valid.paths, s.labels, result["probs"])


def log_row(s: Session, row: dict) -> None:
    if s.dist.main:
        s.metrics.append(row)
        s.emit(events.Log(dict(row)))


class ThroughputMeter:
    """Mean training loss and images/s since the last log row, kept on the device between rows."""

    def __init__(self, device: torch.device):
        self.device = device
        self.restart()

    def restart(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.bad_step = torch.zeros((), dtype=torch.int64, device=self.device)  # 0: every loss finite
        self.bad_value = torch.zeros((), dtype=torch.float32, device=self.device)
        self.loss_n, self.images, self.t0 = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, images: int, step: int) -> None:
        """Accumulate one step's loss without reading it (no host-device synchronisation)."""
        first = torch.logical_not(torch.isfinite(loss)) & (self.bad_step == 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_value = torch.where(first, loss.float(), self.bad_value)
        self.loss_sum += loss.double()
        self.loss_n += 1
        self.images += images

    def first_non_finite(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss since the last row, or None (one synchronisation)."""
        step = int(self.bad_step)
        return (step, float(self.bad_value)) if step else None

    def row(self, s: Session) -> dict:
        """A metrics.csv row (without the validation columns) for the current step."""
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        now, step = time.perf_counter(), s.state.step
        row = {"step": step, "epoch": round(step / s.data.steps_per_epoch, 4),
               "images_seen": step * s.cfg.batch_size * s.dist.world,
               "train_loss": round(float(self.loss_sum) / max(1, self.loss_n), 6), "lr": s.scheduler.get_last_lr()[0],
               "images_per_s": round(self.images / max(now - self.t0, 1e-9), 1),
               "gpu_mem_gb": round(torch.cuda.max_memory_allocated(s.device) / 2**30, 2)
               if s.device.type == "cuda" else None}
        return row
