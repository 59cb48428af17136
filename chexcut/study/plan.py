"""A study: the grid of runs (arch x weights x drop x seed) as a plan, a shell script, a Slurm array.

``plan`` writes ``STUDY_DIR/plan.json``, ``run.sh`` (one idempotent line per run: finished runs are
skipped, interrupted ones resumed), ``commands.txt`` (one command per run) and, with ``slurm``,
``study.sbatch`` (one array task per run). ``run_plan`` executes the plan locally, N runs at once,
one GPU each. Every run lives in ``STUDY_DIR/runs/ID/`` (a finetune run directory) and ends with
``eval.json`` + ``predictions.csv`` from ``chexcut evaluate``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chexcut.models.registry import PAPER_ARCHS, get_arch
from chexcut.errors import ChexcutError
from chexcut import rundir
from chexcut.fileio import write_json, write_text
from chexcut.rundir import RunDir

WEIGHTS = ("imagenet", "none")
PLAN = "plan.json"  # the study folder's plan; run directories live under runs/


def run_id(arch: str, weights: str, drop: int, seed: int) -> str:
    return f"{arch}-{weights}-d{drop}-s{seed}"


def plan_study(out: Path, data: Path, archs=PAPER_ARCHS, weights=("imagenet", "none"), drops=(0, 1, 2),
               seeds=(0,), finetune_args: list[str] | None = None, bootstrap: int = 1000,
               evaluate_args: list[str] | None = None, slurm: bool = False, gpus_per_task: int = 1,
               slurm_args: list[str] | None = None, chexcut_cmd: str = "chexcut", bench: bool = False,
               force: bool = False, nodes: int = 1) -> dict:
    """Write the plan and its scripts; returns the plan. ``bench``: each run also measures its model's
    latency and throughput (`chexcut bench RUN --json RUN/bench.json`) before it is evaluated."""
    data = Path(data)
    if not data.exists():
        raise ChexcutError(f"--data {data} does not exist")
    archs = [get_arch(a).name for a in archs]
    for w in weights:
        if w not in WEIGHTS and not Path(w).is_file():
            raise ChexcutError(f"--weights {w!r}: use imagenet, none (or a state dict file)")
    if not seeds or not drops or not archs or not weights:
        raise ChexcutError("a study needs at least one arch, weights, drop and seed")
    if any(d < 0 for d in drops):
        raise ChexcutError("--drops must be >= 0")
    if gpus_per_task < 1 or nodes < 1:
        raise ChexcutError("--gpus-per-task and --nodes must be at least 1")
    if (Path(out) / PLAN).exists() and not force:
        raise ChexcutError(f"{out} already holds a study plan; pass --force to plan over it (runs already done "
                           f"are kept and skipped when their settings match)")
    from chexcut.fileio import check_output_folder

    out = check_output_folder(Path(out), "study folder")
    out.mkdir(parents=True, exist_ok=True)
    finetune_args = list(finetune_args or [])
    evaluate_args = list(evaluate_args or [])
    runs, skipped = [], []
    for arch in archs:
        n_blocks = get_arch(arch).family.num_blocks
        for w in weights:
            for d in drops:
                if d > n_blocks - 1:
                    skipped.append(f"{arch} drop {d} (only {n_blocks} blocks)")
                    continue
                for s in seeds:
                    rid = run_id(arch, Path(w).stem if Path(w).is_file() else w, d, s)
                    runs.append({"id": rid, "arch": arch, "weights": w, "drop": d, "seed": s,
                                 "run_dir": f"runs/{rid}"})
    data_abs = str(data.resolve())
    for r in runs:
        ft = ["finetune", r["arch"], "--drop", str(r["drop"]), "--weights", r["weights"], "--seed", str(r["seed"]),
              "--data", data_abs, "--out", r["run_dir"], "--force", "--quiet", *finetune_args]
        # no data options: each run is evaluated on its own validation rows (recorded in its config.json)
        ev = ["evaluate", r["run_dir"], "--bootstrap", str(bootstrap), "--seed", str(r["seed"]),
              "--predictions-out", f"{r['run_dir']}/{rundir.PREDICTIONS}", "--json", f"{r['run_dir']}/{rundir.EVAL}",
              "--quiet", *_inference_args(finetune_args), *evaluate_args]
        r["finetune"] = ft
        r["evaluate"] = ev
        if bench:
            r["bench"] = ["bench", r["run_dir"], "--json", f"{r['run_dir']}/{rundir.BENCH}", "--quiet"]
    if not runs:
        raise ChexcutError(f"no runs to plan: {'; '.join(dict.fromkeys(skipped)) or 'empty grid'}")
    plan = {"format": "chexcut-study", "version": 1, "data": data_abs, "archs": archs, "weights": list(weights),
            "drops": list(drops), "seeds": list(seeds), "finetune_args": finetune_args, "bootstrap": bootstrap,
            "evaluate_args": evaluate_args, "bench": bench, "runs": runs, "skipped": skipped}
    write_json(out / PLAN, plan)
    lines = [run_line(r, chexcut_cmd) for r in runs]
    write_text(out / "run.sh", _RUN_SH.format(n=len(runs), cmd=chexcut_cmd) + "\n".join(lines) + "\n")
    os.chmod(out / "run.sh", 0o755)
    write_text(out / "commands.txt", "\n".join(run_line(r, chexcut_cmd, gpus=gpus_per_task) for r in runs) + "\n")
    if slurm:
        write_text(out / "study.sbatch", sbatch_script(out, len(runs), gpus_per_task, slurm_args or [], nodes))
    return plan


def _inference_args(finetune_args: list[str]) -> list[str]:
    """The finetune args evaluate shares (the data options it reads from the run itself)."""
    keep = {"--cache", "--workers"}
    out, i = [], 0
    while i < len(finetune_args):
        a = finetune_args[i]
        if a in keep and i + 1 < len(finetune_args):
            out += [a, finetune_args[i + 1]]
            i += 2
            continue
        i += 1
    return out


_RUN_SH = """#!/usr/bin/env bash
# chexcut study: {n} runs. Idempotent: a run with eval.json is skipped, one with a checkpoint resumed.
# Run from anywhere; CHEXCUT overrides the command (e.g. CHEXCUT="python -m chexcut").
set -u
cd "$(dirname "$0")"
CHEXCUT=${{CHEXCUT:-{cmd}}}
failed=0
"""


def run_line(r: dict, chexcut_cmd: str = "chexcut", gpus: int = 1) -> str:
    """One idempotent shell line: skip when evaluated, resume when a checkpoint exists, else start."""
    q = " ".join
    d = shlex.quote(r["run_dir"])
    ft = q(shlex.quote(a) for a in r["finetune"][1:])
    ev = q(shlex.quote(a) for a in r["evaluate"])
    if r.get("bench"):  # measured before the evaluation that marks the run done
        ev = q(shlex.quote(a) for a in r["bench"]) + f" >> {d}/{rundir.LOG} 2>&1 && $CHEXCUT " + ev
    launcher = "$CHEXCUT" if gpus <= 1 else f"torchrun --standalone --nproc_per_node {gpus} -m chexcut"
    ev_json, ckpt, log = rundir.EVAL, rundir.LAST, rundir.LOG
    return (f"[ -f {d}/{ev_json} ] || {{ mkdir -p {d} && {{ if [ -f {d}/{ckpt} ]; then "
            f"{launcher} finetune --resume {d} --quiet; else {launcher} finetune {ft}; fi; }} > {d}/{log} 2>&1 "
            f"&& $CHEXCUT {ev} >> {d}/{log} 2>&1 || {{ echo \"failed: {r['id']} (log: {d}/{log})\"; "
            f"failed=$((failed+1)); }}; }}")


def sbatch_script(out: Path, n: int, gpus: int, extra: list[str], nodes: int = 1) -> str:
    if nodes > 1:
        return multinode_sbatch(out, n, gpus, extra, nodes)
    head = [
        "#!/usr/bin/env bash",
        "#SBATCH --job-name=chexcut-study",
        f"#SBATCH --array=0-{n - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --gpus-per-task={gpus}",
        f"#SBATCH --cpus-per-task={min(8 * gpus, 64)}",
        f"#SBATCH --output={out.resolve()}/slurm-%A_%a.out",
        *[f"#SBATCH {a}" for a in extra],
        "# One array task per run: line SLURM_ARRAY_TASK_ID+1 of commands.txt (idempotent, resumable).",
        "set -u",
        f"cd {shlex.quote(str(out.resolve()))}",
        "CHEXCUT=${CHEXCUT:-chexcut}",
        "failed=0",
        'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" commands.txt)',
        'eval "$line"',
        'exit $failed',
    ]
    return "\n".join(head) + "\n"


def multinode_sbatch(out: Path, n: int, gpus: int, extra: list[str], nodes: int) -> str:
    """One array task per run, each on ``nodes`` nodes: ``srun`` starts one torchrun per node, and the
    torchrun agents meet at a c10d rendezvous on the task's first node (rank 0 writes the run directory)."""
    return "\n".join([
        "#!/usr/bin/env bash",
        "#SBATCH --job-name=chexcut-study",
        f"#SBATCH --array=0-{n - 1}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --cpus-per-task={min(8 * gpus, 64)}",
        f"#SBATCH --output={out.resolve()}/slurm-%A_%a.out",
        *[f"#SBATCH {a}" for a in extra],
        f"# Multi-node: each run trains on {nodes} nodes x {gpus} GPUs; the rendezvous is on the first node.",
        "set -u",
        f"cd {shlex.quote(str(out.resolve()))}",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "port=$((29500 + SLURM_ARRAY_TASK_ID % 1000))",
        f'export CHEXCUT="srun torchrun --nnodes {nodes} --nproc-per-node {gpus} --rdzv-backend c10d '
        '--rdzv-endpoint $head:$port --rdzv-id chexcut-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID -m chexcut"',
        "failed=0",
        'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" commands.txt)',
        'eval "$line"',
        "exit $failed",
    ]) + "\n"


def load_plan(study_dir: Path) -> dict:
    try:
        plan = json.loads((Path(study_dir) / PLAN).read_text())
    except (OSError, ValueError):
        raise ChexcutError(f"{study_dir} has no readable plan.json: run `chexcut study plan` first") from None
    if plan.get("format") != "chexcut-study":
        raise ChexcutError(f"{study_dir}/plan.json is not a chexcut study plan")
    return plan


# ----------------------------------------------------------------------------- running locally

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


def _run_in_process(job: Job) -> None:
    """One run's idempotent line, in this process: finetune (or --resume it), then evaluate."""
    from chexcut.cli import app

    r, rd = job.run, RunDir(job.run["run_dir"])
    rd.path.mkdir(parents=True, exist_ok=True)
    finetune = ["finetune", "--resume", r["run_dir"], "--quiet"] if rd.last.is_file() else r["finetune"]
    for args in (finetune, r.get("bench"), r["evaluate"]):
        if args:
            app(args=list(args), prog_name="chexcut", standalone_mode=False)


def run_plan_in_process(study_dir: Path, on_update=None) -> list[Job]:
    """Execute the plan's runs one after another in this process: no interpreter and torch import per
    step (what a short study on a CPU spends most of its time on). Failures are logged to the run's
    log.txt and never stop the other runs; Ctrl-C stops after the current run saved its checkpoint."""
    import traceback

    study_dir = Path(study_dir)
    all_jobs = [Job(r) for r in load_plan(study_dir)["runs"]]
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
                _run_in_process(j)
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
    n_gpus = _gpu_count()
    all_jobs = [Job(r) for r in plan["runs"]]
    for j in all_jobs:
        if RunDir(study_dir / j.run["run_dir"]).eval.is_file():
            j.status = "skipped"
    free_gpus = list(range(n_gpus))
    on_update = on_update or (lambda js: None)
    on_update(all_jobs)
    import signal as sig
    import threading

    from chexcut.training.train import _on_sigterm

    old = sig.signal(sig.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        while True:
            running = [j for j in all_jobs if j.status == "running"]
            for j in running:
                rc = j.proc.poll()
                if rc is not None:
                    j.status = "done" if rc == 0 else "failed"
                    j.ended = time.time()
                    if j.gpu is not None:
                        free_gpus.append(j.gpu)
            running = [j for j in all_jobs if j.status == "running"]
            queued = [j for j in all_jobs if j.status == "queued"]
            while queued and len(running) < jobs:
                j = queued.pop(0)
                env = dict(os.environ, CHEXCUT=cmd)
                if n_gpus:
                    j.gpu = free_gpus.pop(0) if free_gpus else None
                    if j.gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = str(j.gpu)
                line = "set -u; failed=0; " + run_line(j.run, "chexcut") + "; exit $failed"
                j.proc = subprocess.Popen(["bash", "-c", line], cwd=study_dir, env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                j.status, j.started = "running", time.time()
                running.append(j)
            on_update(all_jobs)
            if not running and not queued:
                return all_jobs
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every running run saves a checkpoint, then we stop
        import signal as sig

        for j in all_jobs:
            if j.status == "running" and j.proc and j.proc.poll() is None:
                try:  # the whole process group: bash and the chexcut it runs (finetune checkpoints, exits 130)
                    os.killpg(j.proc.pid, sig.SIGINT)
                except ProcessLookupError:
                    pass
        for j in all_jobs:
            if j.proc:
                j.proc.wait()
        raise
    finally:
        if old is not None:
            sig.signal(sig.SIGTERM, old)
