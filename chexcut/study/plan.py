"""A study: the grid of runs (arch x weights x drop x seed) as a plan, a shell script, a Slurm array.

``plan`` writes ``STUDY_DIR/plan.json``, ``run.sh`` (one idempotent line per run: finished runs are
skipped, interrupted ones resumed), ``commands.txt`` (one command per run) and, with ``slurm``,
``study.sbatch`` (one array task per run). :mod:`chexcut.study.runner` executes the plan locally. Every run lives in ``STUDY_DIR/runs/ID/`` (a finetune run directory) and ends with
``eval.json`` + ``predictions.csv`` from ``chexcut evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from chexcut import rundir
from chexcut.errors import ChexcutError
from chexcut.fileio import write_json, write_text
from chexcut.models.registry import PAPER_ARCHS, get_arch
from chexcut.training.config import FinetuneOptions

WEIGHTS = ("imagenet", "none")
PLAN = "plan.json"  # the study folder's plan; run directories live under runs/
PLAN_VERSION = 1


def weights_name(weights: str) -> str:
    """imagenet, none, or a weights file's stem: how runs and cells name their weights."""
    return Path(weights).stem if Path(weights).is_file() else weights


def run_id(arch: str, weights: str, drop: int, seed: int) -> str:
    return f"{arch}-{weights}-d{drop}-s{seed}"


@dataclass(frozen=True)
class Grid:
    """The study's grid: every (arch, weights, drop, seed) cell is one run."""

    archs: tuple[str, ...] = PAPER_ARCHS
    weights: tuple[str, ...] = WEIGHTS
    drops: tuple[int, ...] = (0, 1, 2)
    seeds: tuple[int, ...] = (0,)

    def check(self) -> "Grid":
        archs = tuple(get_arch(a).name for a in self.archs)
        for w in self.weights:
            if w not in WEIGHTS and not Path(w).is_file():
                raise ChexcutError(f"--weights {w!r}: use imagenet, none (or a state dict file)")
        if not self.seeds or not self.drops or not archs or not self.weights:
            raise ChexcutError("a study needs at least one arch, weights, drop and seed")
        from chexcut.choices import check_bounds

        for d in self.drops:
            check_bounds("drop", d, "--drops")
        for s in self.seeds:
            check_bounds("seed", s, "--seeds")
        return dataclasses.replace(self, archs=archs)

    def cells(self) -> tuple[list[dict], list[str]]:
        """(runs, skipped): one run per cell; drops past an arch's blocks are skipped, with the reason."""
        runs, skipped = [], []
        for arch in self.archs:
            n_blocks = get_arch(arch).family.num_blocks
            for w in self.weights:
                for d in self.drops:
                    if d > n_blocks - 1:
                        skipped.append(f"{arch} drop {d} (only {n_blocks} blocks)")
                        continue
                    for s in self.seeds:
                        rid = run_id(arch, weights_name(w), d, s)
                        runs.append({"id": rid, "arch": arch, "weights": w, "drop": d, "seed": s,
                                     "run_dir": f"runs/{rid}"})
        return runs, skipped


@dataclass(frozen=True)
class Slurm:
    """How ``study.sbatch`` asks for resources. Nothing is written that the user did not ask for except what a
    study needs (one task per run, its GPUs, a warning signal and requeue), so the cluster's defaults apply:
    no ``--cpus-per-task`` unless given (DefCpuPerGPU or the partition's default decides)."""

    gpus_per_task: int = 1  # 0: a CPU partition (no GPU directive, no torchrun)
    nodes: int = 1
    extra: tuple[str, ...] = ()  # more #SBATCH directives, as given
    cpus_per_task: int | None = None
    time: str | None = None  # Slurm's time format: MM, HH:MM:SS, D-HH[:MM[:SS]]
    partition: str | None = None
    account: str | None = None
    mem: str | None = None  # e.g. 32G
    signal_before: int = 300  # seconds before the time limit Slurm sends SIGTERM to the script (0: none)
    requeue: bool = True

    def __post_init__(self):
        import re

        from chexcut.choices import check_bounds

        for name in ("gpus_per_task", "nodes", "cpus_per_task", "signal_before"):
            check_bounds(name, getattr(self, name))
        if self.time is not None and not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", self.time):
            raise ChexcutError(f"--time {self.time!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS)")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ChexcutError(f"--mem {self.mem!r} is not a Slurm size (e.g. 32G, 16000M)")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise ChexcutError(f"--{name} {value!r}: one name without spaces")

    def directives(self) -> list[str]:
        """The #SBATCH lines after the array and task layout (resources, time, signal, requeue, extras)."""
        out = [f"--{k}={v}" for k, v in (("cpus-per-task", self.cpus_per_task), ("time", self.time),
                                         ("partition", self.partition), ("account", self.account),
                                         ("mem", self.mem)) if v is not None]
        if self.signal_before:
            out.append(f"--signal=B:TERM@{self.signal_before}")
        if self.requeue:
            out += ["--requeue", "--open-mode=append"]
        return [f"#SBATCH {d}" for d in out + list(self.extra)]


def plan_study(out: Path, data: Path, grid: Grid = Grid(), options: FinetuneOptions = FinetuneOptions(), *,
               bootstrap: int = 1000, bench: bool = False, slurm: Slurm | None = None, force: bool = False,
               chexcut_cmd: str = "chexcut", evaluate_options: dict | None = None) -> dict:
    """Write the plan and its scripts; returns the plan. ``options`` go to every finetune (checked when they
    were made); ``bench``: each run also measures its model's latency and throughput
    (`chexcut bench RUN --json RUN/bench.json`) before it is evaluated; ``slurm``: also write study.sbatch;
    ``evaluate_options`` (:func:`check_evaluate_options`): subgroups and calibration for every evaluate."""
    data = Path(data)
    evaluate_options = check_evaluate_options(evaluate_options or {})
    if not data.exists():
        raise ChexcutError(f"--data {data} does not exist")
    grid = grid.check()
    if (Path(out) / PLAN).exists() and not force:
        raise ChexcutError(f"{out} already holds a study plan; pass --force to plan over it (runs already done "
                           f"are kept and skipped when their settings match)")
    from chexcut.fileio import check_output_folder

    out = check_output_folder(Path(out), "study folder")
    out.mkdir(parents=True, exist_ok=True)
    runs, skipped = grid.cells()
    if not runs:
        raise ChexcutError(f"no runs to plan: {'; '.join(dict.fromkeys(skipped)) or 'empty grid'}")
    data_abs = str(data.resolve())
    for r in runs:
        r.update(run_commands(r, data_abs, options, bootstrap, bench, evaluate_options, study=str(out)))
    _refuse_changed_runs(out, runs)
    plan = {"format": "chexcut-study", "version": PLAN_VERSION, "data": data_abs, "archs": list(grid.archs),
            "weights": list(grid.weights), "drops": list(grid.drops), "seeds": list(grid.seeds),
            "finetune_args": options.to_args(), "finetune_options": options.to_json(), "bootstrap": bootstrap,
            "bench": bench, "evaluate_options": evaluate_options, "runs": runs, "skipped": skipped}
    write_json(out / PLAN, plan)
    lines = [run_line(r, chexcut_cmd) for r in runs]
    write_text(out / "run.sh", _RUN_SH.format(n=len(runs), cmd=chexcut_cmd) + "\n".join(lines) + "\n")
    os.chmod(out / "run.sh", 0o755)
    gpus = slurm.gpus_per_task if slurm else 1
    write_text(out / "commands.txt", "\n".join(run_line(r, chexcut_cmd, gpus=gpus) for r in runs) + "\n")
    if slurm:
        write_text(out / "study.sbatch", sbatch_script(out, len(runs), slurm))
    return plan


def _refuse_changed_runs(out: Path, runs: list[dict]) -> None:
    """A re-plan (``--force``) with other settings: runs that already hold results from the old settings would be
    kept as done by every runner. Refuse, naming them, rather than mix two sets of settings in one study."""
    try:
        old = {r["id"]: r for r in json.loads((out / PLAN).read_text()).get("runs", [])}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return
    changed = [r["id"] for r in runs if r["id"] in old and (old[r["id"]].get("finetune"), old[r["id"]].get("evaluate"))
               != (r["finetune"], r["evaluate"]) and any((out / r["run_dir"]).glob("*"))]
    if changed:
        raise ChexcutError(f"{len(changed)} runs of {out} hold results from other settings (first: {changed[0]}); remove "
                           f"their folders (rm -r {out}/runs/{changed[0]} ...) or plan into a new folder")


def check_evaluate_options(o: dict) -> dict:
    """``{"by": [COL...], "age_bins": [EDGE...] | None, "groups": PATH | None, "calibration": bool}``, checked
    as evaluate checks them (the groups CSV made absolute)."""
    from chexcut.evaluation.settings import Statistics

    unknown = set(o) - {"by", "age_bins", "groups", "calibration"}
    if unknown:
        raise ChexcutError(f"unknown evaluate options: {', '.join(sorted(unknown))}")
    by, bins = list(o.get("by") or []), o.get("age_bins")
    Statistics(by=tuple(by), age_bins=tuple(bins) if bins else None)
    if "Age" in by and not bins:
        raise ChexcutError("--by Age needs --age-bins EDGES (e.g. 0,40,60,80,200)")
    groups = o.get("groups")
    if groups is not None:
        if not Path(groups).is_file():
            raise ChexcutError(f"groups CSV not found: {groups}")
        groups = str(Path(groups).resolve())
    return {"by": by, "age_bins": list(bins) if bins else None, "groups": groups,
            "calibration": bool(o.get("calibration", True))}


def evaluate_args(o: dict) -> list[str]:
    args = ["--by", ",".join(o["by"])] if o.get("by") else []
    if o.get("age_bins"):
        args += ["--age-bins", ",".join(format(e, "g") for e in o["age_bins"])]
    if o.get("groups"):
        args += ["--groups", o["groups"]]
    if not o.get("calibration", True):
        args.append("--no-calibration")
    return args


def grid_cell(r: dict) -> str:
    """The run's cell without its seed: seeds of one cell are grouped by it (e.g. in MLflow)."""
    return f"{r['arch']}/{weights_name(r['weights'])}/drop{r['drop']}"


def run_commands(r: dict, data: str, options: FinetuneOptions, bootstrap: int, bench: bool,
                 evaluate_options: dict | None = None, study: str = ".") -> dict:
    """One run's finetune, evaluate (and bench) command lines."""
    from chexcut.training.config import study_experiment, study_tags

    ft = ["finetune", r["arch"], "--drop", str(r["drop"]), "--weights", r["weights"], "--seed", str(r["seed"]),
          "--data", data, "--out", r["run_dir"], "--force", "--quiet", *options.to_args()]
    if options.track:  # the experiment is the study; runs carry their grid cell (the evaluate joins the run's)
        ft += ["--track-experiment", study_experiment(study),
               *[a for k, v in study_tags(study, grid_cell(r)).items() for a in ("--track-tag", f"{k}={v}")]]
    # no data options: each run is evaluated on its own validation rows (recorded in its config.json)
    ev = ["evaluate", r["run_dir"], "--bootstrap", str(bootstrap), "--seed", str(r["seed"]),
          "--predictions-out", f"{r['run_dir']}/{rundir.PREDICTIONS}", "--json", f"{r['run_dir']}/{rundir.EVAL}",
          "--quiet", *_inference_args(options.to_args()), *evaluate_args(evaluate_options or {})]
    cmds = {"finetune": ft, "evaluate": ev}
    if bench:
        cmds["bench"] = ["bench", r["run_dir"], "--json", f"{r['run_dir']}/{rundir.BENCH}", "--quiet"]
    return cmds


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


def sbatch_script(out: Path, n: int, slurm: Slurm) -> str:
    """One array task per run (line SLURM_ARRAY_TASK_ID+1 of commands.txt), single- or multi-node."""
    gpus = slurm.gpus_per_task
    if slurm.nodes > 1:
        layout = [f"--nodes={slurm.nodes}", "--ntasks-per-node=1"] + ([f"--gpus-per-node={gpus}"] if gpus else [])
    else:
        layout = ["--ntasks=1"] + ([f"--gpus-per-task={gpus}"] if gpus else [])
    head = ["#!/usr/bin/env bash", "#SBATCH --job-name=chexcut-study", f"#SBATCH --array=0-{n - 1}",
            *[f"#SBATCH {d}" for d in layout], f"#SBATCH --output={out.resolve()}/slurm-%A_%a.out",
            *slurm.directives(),
            "# One array task per run: line SLURM_ARRAY_TASK_ID+1 of commands.txt (idempotent: done runs are",
            "# skipped, interrupted ones resume from their checkpoint)."]
    if slurm.signal_before:
        head += [f"# --signal=B:TERM@{slurm.signal_before}: {slurm.signal_before} s before the time limit Slurm "
                 "signals this script, which passes",
                 "# SIGTERM to the run (it checkpoints the step it is at and exits 143) and requeues the task; "
                 "scancel and",
                 "# preemption signal every process, and the run checkpoints the same way (a cancelled task is "
                 "not requeued)."]
    body = ["set -u", f"cd {shlex.quote(str(out.resolve()))}", "CHEXCUT=${CHEXCUT:-chexcut}"]
    if slurm.nodes > 1:
        nproc = max(gpus, 1)
        body += [f"# Multi-node: each run trains on {slurm.nodes} nodes x {nproc} processes; the rendezvous is on "
                 "the first node.",
                 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "port=$((29500 + SLURM_ARRAY_TASK_ID % 1000))",
                 f'export CHEXCUT="srun torchrun --nnodes {slurm.nodes} --nproc-per-node {nproc} --rdzv-backend c10d '
                 '--rdzv-endpoint $head:$port --rdzv-id chexcut-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID -m chexcut"']
    return "\n".join(head + body) + "\n" + _SBATCH_RUN


# The task's line runs in a background subshell so that the script's trap runs at once when SIGTERM comes
# (the subshell outlives the signal: it waits for its command, which does the stopping); the script waits for it
# before it decides whether to requeue (only a task still RUNNING, i.e. stopped ahead of its time limit, never
# a cancelled one).
_SBATCH_RUN = r"""line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" commands.txt)
pgid=$(ps -o pgid= $$ | tr -d ' ')
stopping=0
on_term() {
  trap '' TERM; stopping=1
  echo "chexcut-study: SIGTERM: the run checkpoints and stops" >&2
  if [ "$pgid" = "$$" ]; then kill -TERM -- "-$pgid" 2>/dev/null; else pkill -TERM -P "$child" 2>/dev/null; fi
}
trap on_term TERM
( trap ':' TERM; failed=0; eval "$line"; exit $failed ) &
child=$!
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
task="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-}}_${SLURM_ARRAY_TASK_ID}"
if [ "$stopping" = 1 ] && [ "$(squeue -h -j "${SLURM_JOB_ID:-0}" -o %T 2>/dev/null)" = RUNNING ]; then
  echo "chexcut-study: requeueing $task: it resumes from its checkpoint" >&2
  scontrol requeue "$task"
fi
exit $rc
"""


def load_plan(study_dir: Path) -> dict:
    try:
        plan = json.loads((Path(study_dir) / PLAN).read_text())
    except (OSError, ValueError):
        raise ChexcutError(f"{study_dir} has no readable plan.json: run `chexcut study plan` first") from None
    if plan.get("format") != "chexcut-study" or not isinstance(plan.get("runs"), list):
        raise ChexcutError(f"{study_dir}/plan.json is not a chexcut study plan")
    if plan.get("version") != PLAN_VERSION:
        raise ChexcutError(f"{study_dir}/plan.json has plan format {plan.get('version')!r}, this chexcut reads format "
                           f"{PLAN_VERSION}: plan the study again (chexcut study plan ... --force)")
    return plan
