"""A study's plan executed on this machine: N runs at once as subprocesses (one GPU each), or one after
another in this process (the library called directly: no interpreter and torch import per run).

A run is done when its ``eval.json`` exists; one with a checkpoint is resumed. Failures never stop the
other runs; Ctrl-C or SIGTERM stops after every running run saved its checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir
from chexcut.signals import sigterm_interrupts
from chexcut.study.plan import load_plan, run_line


@dataclass
class Job:
    run: dict
    status: str = "queued"  # queued | running | done | failed | skipped
    proc: subprocess.Popen | None = None
    gpu: int | None = None
    started: float = 0.0
    ended: float = 0.0


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def images_per_s(run_dir: Path) -> float | None:
    """The training speed in the run's last metrics row."""
    return RunDir(run_dir).last_metric("images_per_s")


@contextlib.contextmanager
def _inside(folder: Path):
    """Run with ``folder`` as the working directory (the plan's paths are relative to the study)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _run_in_process(job: Job, plan: dict) -> None:
    """One run's idempotent line, in this process, through the library: finetune (or resume it), bench when
    planned, then evaluate (writing predictions.csv and eval.json, which marks the run done)."""
    from chexcut.evaluation.orchestrate import EvalInputs, run_evaluation
    from chexcut.evaluation.settings import Inference, Statistics
    from chexcut.fileio import write_json
    from chexcut.models.source import ModelSource
    from chexcut.training.config import FinetuneOptions, Run
    from chexcut.training.loop import finetune

    if "finetune_options" not in plan:
        raise ChexcutError("this plan was written by an older chexcut: plan the study again (study plan --force)")
    options = FinetuneOptions.from_json(plan["finetune_options"])
    r, rd = job.run, RunDir(job.run["run_dir"])
    rd.path.mkdir(parents=True, exist_ok=True)
    from chexcut import tracking
    from chexcut.study.plan import grid_cell

    if rd.last.is_file():
        run = Run.from_run_dir(rd.path)
        run.track = tracking.resumed(rd.path)
    else:
        source = ModelSource.parse(r["arch"], drop=r["drop"], weights=r["weights"], seed=r["seed"])
        run = Run(run_dir=rd.path, data=Path(plan["data"]), opts=options.data_options(),
                  cfg=options.train_config(r["seed"]), model_source=source.to_json(),
                  cache=Path(options.cache) if options.cache else None, skip_missing=options.skip_missing,
                  force=True, track=options.tracking(".", grid_cell(r)))
    finetune(run)
    if r.get("bench"):
        from chexcut.deploy.bench import bench

        write_json(rd.bench, bench(str(rd.path)))
    infer = Inference(workers=options.train.get("workers"),
                      cache_dir=Path(options.cache) if options.cache else None)
    ev = plan.get("evaluate_options") or {}
    stats = Statistics(bootstrap=plan["bootstrap"], seed=r["seed"], by=tuple(ev.get("by") or ()),
                       age_bins=tuple(ev["age_bins"]) if ev.get("age_bins") else None,
                       calibration=ev.get("calibration", True))
    result = run_evaluation(EvalInputs(model=str(rd.path), groups=Path(ev["groups"]) if ev.get("groups") else None),
                            stats, infer, predictions_out=rd.predictions)
    write_json(rd.eval, result)
    tracking.log_evaluation(rd.path, result)


def run_plan_in_process(study_dir: Path, on_update=None) -> list[Job]:
    """Execute the plan's runs one after another in this process: no interpreter and torch import per
    step (what a short study on a CPU spends most of its time on). Failures are logged to the run's
    log.txt and never stop the other runs; Ctrl-C stops after the current run saved its checkpoint."""
    import traceback

    study_dir = Path(study_dir)
    plan = load_plan(study_dir)
    all_jobs = [Job(r) for r in plan["runs"]]
    on_update = on_update or (lambda js: None)
    with _inside(study_dir):
        for j in all_jobs:
            if RunDir(j.run["run_dir"]).eval.is_file():
                j.status = "skipped"
        for j in all_jobs:
            if j.status == "skipped":
                continue
            j.status, j.started = "running", time.time()
            on_update(all_jobs)
            try:
                _run_in_process(j, plan)
                j.status = "done"
            except KeyboardInterrupt:
                j.status = "failed"
                raise
            except Exception as e:  # a failed run is reported with its log, like a failed shell line
                j.status = "failed"
                RunDir(j.run["run_dir"]).log.write_text(
                    (str(e) if isinstance(e, ChexcutError) else traceback.format_exc()) + "\n")
            j.ended = time.time()
            on_update(all_jobs)
    return all_jobs


def run_plan(study_dir: Path, jobs: int = 1, on_update=None, chexcut_cmd: str | None = None,
             poll: float = 0.5) -> list[Job]:
    """Execute every run of the plan, ``jobs`` at a time (one GPU each when there are GPUs).

    Failures never stop the other runs. ``on_update(jobs)`` is called as states change.
    """
    study_dir = Path(study_dir)
    plan = load_plan(study_dir)
    if jobs < 1:
        raise ChexcutError("--jobs must be at least 1")
    cmd = chexcut_cmd or f"{shlex.quote(sys.executable)} -m chexcut"
    all_jobs = [Job(r) for r in plan["runs"]]
    for j in all_jobs:
        if RunDir(study_dir / j.run["run_dir"]).eval.is_file():
            j.status = "skipped"
    pool = _Pool(study_dir, cmd, jobs, list(range(_gpu_count())))
    on_update = on_update or (lambda js: None)
    on_update(all_jobs)
    try:
        with sigterm_interrupts():
            while pool.step(all_jobs):
                on_update(all_jobs)
                time.sleep(poll)
            on_update(all_jobs)
            return all_jobs
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every running run saves a checkpoint, then we stop
        pool.interrupt(all_jobs)
        raise


@dataclass
class _Pool:
    """Subprocesses for the plan's lines, at most ``jobs`` at once, each on a free GPU when there are GPUs."""

    study_dir: Path
    cmd: str
    jobs: int
    free_gpus: list[int]

    def step(self, all_jobs: list[Job]) -> bool:
        """Collect finished runs and start queued ones; False when nothing runs or waits any more."""
        for j in all_jobs:
            if j.status == "running" and j.proc.poll() is not None:
                j.status = "done" if j.proc.returncode == 0 else "failed"
                j.ended = time.time()
                if j.gpu is not None:
                    self.free_gpus.append(j.gpu)
        running = sum(j.status == "running" for j in all_jobs)
        for j in [j for j in all_jobs if j.status == "queued"][:max(0, self.jobs - running)]:
            self.start(j)
        return any(j.status in ("running", "queued") for j in all_jobs)

    def start(self, j: Job) -> None:
        env = dict(os.environ, CHEXCUT=self.cmd)
        if self.free_gpus:
            j.gpu = self.free_gpus.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = str(j.gpu)
        line = "set -u; failed=0; " + run_line(j.run, "chexcut") + "; exit $failed"
        j.proc = subprocess.Popen(["bash", "-c", line], cwd=self.study_dir, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        j.status, j.started = "running", time.time()

    @staticmethod
    def interrupt(all_jobs: list[Job]) -> None:
        """SIGINT to each running run's process group (bash and its chexcut: finetune checkpoints, exits 130)."""
        import signal

        for j in all_jobs:
            if j.status == "running" and j.proc and j.proc.poll() is None:
                try:
                    os.killpg(j.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for j in all_jobs:
            if j.proc:
                j.proc.wait()
