"""The one executor of a study's plan: one planned run, read from ``plan.json`` alone.

``run.sh``, ``commands.txt``, ``study.sbatch``, ``study run --jobs N`` (subprocesses) and the in-process runner
all execute a run through :func:`execute` (the scripts through ``chexcut study exec STUDY --index N``), so no
generated script holds a user-supplied string (a path, a weights file name, a directive) and no run is described
twice. A run is done when its ``eval.json`` exists; one with a checkpoint is resumed; otherwise it starts from
the plan's typed finetune options. Then it is benched (when planned) and evaluated on its own validation rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir

STEPS = ("all", "finetune")  # finetune alone: what each rank of a distributed launch runs


def check_step(step: str) -> str:
    if step not in STEPS:
        raise ChexcutError(f"--step {step!r}: one of {', '.join(STEPS)}")
    return step


def find_run(plan: dict, run_id: str | None = None, index: int | None = None) -> dict:
    """The planned run named ``run_id`` or at ``index`` (0-based, a Slurm array's task id)."""
    runs = plan["runs"]
    if (run_id is None) == (index is None):
        raise ChexcutError("give a RUN_ID or --index N (not both)")
    if index is not None:
        if not 0 <= index < len(runs):
            raise ChexcutError(f"--index {index} is out of range: the plan has {len(runs)} runs (0..{len(runs) - 1})")
        return runs[index]
    for r in runs:
        if r["id"] == run_id:
            return r
    raise ChexcutError(f"no run {run_id!r} in the plan (`chexcut study status` lists them)")


@contextlib.contextmanager
def inside(folder: Path):
    """Run with ``folder`` as the working directory: a plan's run folders are relative to its study."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _launcher_words(launcher: str) -> list[str]:
    try:
        words = shlex.split(launcher)
    except ValueError as e:  # an unbalanced quote, a trailing backslash
        raise ChexcutError(f"--launcher {launcher!r} is not a command line: {str(e).lower()}") from None
    if not words:
        raise ChexcutError("--launcher is empty: give the launch command (e.g. 'torchrun --standalone "
                           "--nproc_per_node 4') or leave --launcher out")
    return words


def check_launcher(launcher: str | None, step: str, study_dir: Path) -> None:
    """``--launcher`` checked before any work, one line each: given to a rank (``--step finetune``, which must not
    launch again), not one command line (an unbalanced quote), empty, or its program not found: on PATH, or for a
    path, from the study folder (where the launch starts)."""
    if launcher is None:
        return
    if step == "finetune":
        raise ChexcutError(f"--launcher {launcher!r} with --step finetune: a rank of a launch must not launch "
                           f"again; give --launcher with --step all (the default) only")
    program = _launcher_words(launcher)[0]
    if "/" in program:
        if shutil.which(str(Path(study_dir).resolve() / program)) is None:
            raise ChexcutError(f"--launcher {launcher!r}: the program {program!r} is not an executable file (a "
                               f"path is taken from the study folder {study_dir})")
    elif shutil.which(program) is None:
        raise ChexcutError(f"--launcher {launcher!r}: the program {program!r} is not found on PATH")


def launch_command(launcher: str, study_dir: Path, run: dict) -> list[str]:
    """The argv that starts this run's finetune under a distributed launcher (``torchrun ...``, ``srun torchrun
    ...``): each rank runs ``chexcut study exec STUDY RUN_ID --step finetune``. Never a shell line."""
    return [*_launcher_words(launcher), "-m", "chexcut", "study", "exec", str(Path(study_dir).resolve()), run["id"],
            "--step", "finetune"]


def _finetune(run: dict, plan: dict) -> None:
    """Start the run from the plan's typed options, or resume it from its checkpoint (this process)."""
    from chexcut import tracking
    from chexcut.models.source import ModelSource
    from chexcut.study.plan import grid_cell, plan_options
    from chexcut.training.config import Run
    from chexcut.training.loop import finetune

    rd = RunDir(run["run_dir"])
    rd.path.mkdir(parents=True, exist_ok=True)
    options = plan_options(plan)
    if rd.last.is_file():
        job = Run.from_run_dir(rd.path)
        job.track = tracking.resumed(rd.path)
    else:
        source = ModelSource.parse(run["arch"], drop=run["drop"], weights=run["weights"], seed=run["seed"],
                                   in_chans=options.in_chans)
        job = Run(run_dir=rd.path, data=Path(plan["data"]), opts=options.data,
                  cfg=options.train_config(run["seed"], run["adapt"], run["label_fraction"]), model_source=source.to_json(),
                  cache=Path(options.cache) if options.cache else None, skip_missing=options.skip_missing,
                  force=True, track=options.tracking(".", grid_cell(run)))
    finetune(job)


def _evaluate(run: dict, plan: dict) -> None:
    """Bench (when planned), then evaluate on the run's own validation rows: predictions.csv, eval.json."""
    from chexcut import tracking
    from chexcut.evaluation.orchestrate import EvalInputs, run_evaluation
    from chexcut.evaluation.result import Evaluation
    from chexcut.evaluation.settings import Inference
    from chexcut.fileio import write_json
    from chexcut.study.plan import plan_options, run_statistics

    rd = RunDir(run["run_dir"])
    options = plan_options(plan)
    if plan.get("bench"):
        from chexcut.deploy.bench import bench

        write_json(rd.bench, bench(str(rd.path)))
    infer = Inference(workers=options.train.get("workers"), cache_dir=Path(options.cache) if options.cache else None)
    ev = plan.get("evaluate_options") or {}
    stats = run_statistics(plan, run["seed"])
    result = Evaluation.from_json(run_evaluation(
        EvalInputs(model=str(rd.path), groups=Path(ev["groups"]) if ev.get("groups") else None), stats, infer,
        predictions_out=rd.predictions), where=str(rd.eval))  # what is written conforms to the schema
    # an external set's columns are its own: no subgroups there
    external_stats = dataclasses.replace(stats, by=(), age_bins=None, prevalence_matched=False)
    for ext in ev.get("external") or []:  # before eval.json, the run's done mark: an interruption redoes them
        rd.external.mkdir(exist_ok=True)
        options = {"dataset": ext["dataset"]} if ext.get("dataset") else {}
        ext_result = Evaluation.from_json(run_evaluation(
            EvalInputs(model=str(rd.path), data=Path(ext["data"]), split="all", options=options), external_stats,
            infer, predictions_out=rd.external_predictions(ext["name"])), where=str(rd.external_eval(ext["name"])))
        write_json(rd.external_eval(ext["name"]), ext_result.to_json())
    write_json(rd.eval, result.to_json())
    tracking.log_evaluation(rd.path, result)


def execute(study_dir: Path, run: dict, plan: dict, *, step: str = "all", launcher: str | None = None,
            log=None) -> str:
    """Execute one planned run: "skipped" when it is already evaluated, else "done" (errors raise).

    ``step="finetune"``: train only (a rank of a distributed launch). ``launcher``: the finetune runs as
    ``LAUNCHER -m chexcut study exec STUDY RUN_ID --step finetune`` (torchrun, srun torchrun) and this process
    waits for it (its output to ``log``, a file), then benches and evaluates."""
    check_step(step)
    check_launcher(launcher, step, study_dir)
    study_dir = Path(study_dir).resolve()  # absolute: the launch's ranks are told it from inside it
    with inside(study_dir):
        rd = RunDir(run["run_dir"])
        if step == "finetune":
            _finetune(run, plan)
            return "done"
        if rd.eval.is_file():
            return "skipped"
        if launcher is not None:
            rd.path.mkdir(parents=True, exist_ok=True)
            _wait_for(launch_command(launcher, study_dir, run), run["id"], log)
        else:
            _finetune(run, plan)
        _evaluate(run, plan)
    return "done"


def _wait_for(argv: list[str], run_id: str, log=None) -> None:
    """Start the distributed finetune and wait for it. A stop signal reaches it too (it is in this process
    group): it checkpoints and exits, so this process keeps waiting (never kills it) and then stops as well."""
    try:
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT if log is not None else None)
    except OSError as e:  # checked at the call; gone (or no longer executable) since
        raise ChexcutError(f"the launcher {argv[0]!r} of {run_id} could not be started: "
                           f"{e.strerror or type(e).__name__}") from None
    interrupted = None
    while True:
        try:
            code = p.wait()
            break
        except KeyboardInterrupt as e:  # the launch got the same signal and is saving its checkpoint
            interrupted = e
    if interrupted is not None or code in (130, 143):
        raise interrupted or KeyboardInterrupt()
    if code != 0:
        raise ChexcutError(f"the distributed finetune of {run_id} exited {code} (its output is in the run's log.txt)")


def execute_logged(study_dir: Path, run: dict, plan: dict, launcher: str | None = None) -> tuple:
    """:func:`execute` with everything it prints going to the run's log.txt, as ``study exec`` runs it: returns
    ``(status, error, log path)``; ``error`` is the one line a user error (or an internal error, its traceback in
    the log) gave, and None when the run is done or skipped. An interrupt is said in the log too (the status and
    the Slurm integration read it) and raised."""
    import traceback

    from chexcut.signals import report_interrupted

    log_path = RunDir(Path(study_dir) / run["run_dir"]).log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status, error = None, None
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            status = execute(study_dir, run, plan, launcher=launcher, log=log)
        except KeyboardInterrupt:
            report_interrupted()
            raise
        except ChexcutError as e:
            error = str(e)
            print(f"chexcut: error: {e}", flush=True)
        except Exception as e:
            error = f"internal error: {type(e).__name__}: {e}"
            traceback.print_exc()
    return status, error, log_path
