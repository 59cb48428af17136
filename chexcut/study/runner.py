"""A study's plan executed on this machine: N runs at once as subprocesses (one GPU each), or one after
another in this process (the library called directly: no interpreter and torch import per run).

A run is done when its ``eval.json`` exists; one with a checkpoint is resumed. Failures never stop the
other runs; Ctrl-C or SIGTERM stops after every running run saved its checkpoint.
"""

from __future__ import annotations

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
from chexcut.study.execute import execute
from chexcut.study.plan import load_plan


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


def run_plan_in_process(study_dir: Path, on_update=None) -> list[Job]:
    """Execute the plan's runs one after another in this process: no interpreter and torch import per
    step (what a short study on a CPU spends most of its time on). Failures are logged to the run's
    log.txt and never stop the other runs; Ctrl-C stops after the current run saved its checkpoint."""
    import traceback

    study_dir = Path(study_dir)
    plan = load_plan(study_dir)
    all_jobs = [Job(r) for r in plan["runs"]]
    on_update = on_update or (lambda js: None)
    for j in all_jobs:
        if RunDir(study_dir / j.run["run_dir"]).eval.is_file():
            j.status = "skipped"
    for j in all_jobs:
        if j.status == "skipped":
            continue
        j.status, j.started = "running", time.time()
        on_update(all_jobs)
        try:
            execute(study_dir, j.run, plan)
            j.status = "done"
        except KeyboardInterrupt:
            j.status = "failed"
            raise
        except Exception as e:  # a failed run is reported with its log, as `study exec` logs it
            j.status = "failed"
            log = RunDir(study_dir / j.run["run_dir"]).log
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text((f"chexcut: error: {e}" if isinstance(e, ChexcutError) else traceback.format_exc()) + "\n")
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
    cmd = shlex.split(chexcut_cmd) if chexcut_cmd else [sys.executable, "-m", "chexcut"]
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
    cmd: list[str]
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
        """``chexcut study exec STUDY RUN_ID`` as an argv (never a shell line), in its own process group."""
        env = dict(os.environ)
        if self.free_gpus:
            j.gpu = self.free_gpus.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = str(j.gpu)
        argv = [*self.cmd, "study", "exec", str(self.study_dir.resolve()), j.run["id"], "--quiet"]
        j.proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
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
