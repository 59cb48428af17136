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
        if any(d < 0 for d in self.drops):
            raise ChexcutError("--drops must be >= 0")
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
                        rid = run_id(arch, Path(w).stem if Path(w).is_file() else w, d, s)
                        runs.append({"id": rid, "arch": arch, "weights": w, "drop": d, "seed": s,
                                     "run_dir": f"runs/{rid}"})
        return runs, skipped


@dataclass(frozen=True)
class Slurm:
    """How ``study.sbatch`` asks for resources: GPUs per task, nodes per run, extra ``#SBATCH`` lines."""

    gpus_per_task: int = 1
    nodes: int = 1
    extra: tuple[str, ...] = ()

    def __post_init__(self):
        if self.gpus_per_task < 1 or self.nodes < 1:
            raise ChexcutError("--gpus-per-task and --nodes must be at least 1")


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
    plan = {"format": "chexcut-study", "version": 1, "data": data_abs, "archs": list(grid.archs),
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
        write_text(out / "study.sbatch", sbatch_script(out, len(runs), slurm.gpus_per_task, list(slurm.extra),
                                                       slurm.nodes))
    return plan


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
    return f"{r['arch']}/{Path(r['weights']).stem if Path(r['weights']).is_file() else r['weights']}/drop{r['drop']}"


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
