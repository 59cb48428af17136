"""``study plan``, ``study run``, ``report`` and ``demo``: many runs, and the paper's findings from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import bound
from chexcut.cli.app import TrackOpt, app, ints, split_list, split_repeated
from chexcut.demo import Demo
from chexcut.errors import ChexcutError

study_app = typer.Typer(help="Plan and run a grid of finetune + evaluate runs (locally or on Slurm).",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("plan", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def study_plan(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Dataset folder for every run (SET:DIR for a published set).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write plan.json, run.sh, commands.txt into.")],
    archs: Annotated[Optional[str], typer.Option("--archs", help="Comma-separated architectures (default: the 16 of the paper).")] = None,
    weights: Annotated[str, typer.Option("--weights", help="Comma-separated: imagenet, none, pretraining sources (NAME or NAME:PATH; `chexcut weights list`), state dict files. A source is run with the archs it fits.")] = "imagenet,none",
    drops: Annotated[str, typer.Option("--drops", help="Comma-separated drops (levels past an arch's blocks are skipped).")] = "0,1,2",
    seeds: Annotated[str, typer.Option("--seeds")] = "0",
    bootstrap: Annotated[int, typer.Option("--bootstrap", **bound("bootstrap"), help="Replicates for each run's evaluate.")] = 1000,
    slurm: Annotated[bool, typer.Option("--slurm", help="Also write study.sbatch (one array task per run).")] = False,
    bench: Annotated[bool, typer.Option("--bench", help="Each run also measures its model's latency and throughput (bench.json; shown by report).")] = False,
    nodes: Annotated[int, typer.Option("--nodes", **bound("nodes"), help="With --slurm: nodes per run (torchrun with a c10d rendezvous on the first).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Plan over an existing study plan.")] = False,
    gpus_per_task: Annotated[int, typer.Option("--gpus-per-task", **bound("gpus_per_task"), help="GPUs per Slurm task (torchrun when > 1; 0: a CPU partition, no GPU directive).")] = 1,
    cpus_per_task: Annotated[Optional[int], typer.Option("--cpus-per-task", **bound("cpus_per_task"), help="CPUs per Slurm task (default: none written, so the cluster's DefCpuPerGPU or partition default applies).")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="Slurm time limit per task (e.g. 12:00:00); a run stopped by it resumes when requeued.")] = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Slurm account.")] = None,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Memory per node (e.g. 32G).")] = None,
    signal_before: Annotated[int, typer.Option("--signal-before", **bound("signal_before"), help="Seconds before the time limit that Slurm sends SIGTERM (the run checkpoints and the task is requeued; 0: none).")] = 300,
    requeue: Annotated[bool, typer.Option("--requeue/--no-requeue", help="Preempted or timed-out tasks come back and resume.")] = True,
    sbatch: Annotated[Optional[str], typer.Option("--sbatch", help="Any other #SBATCH directives, comma-separated (e.g. --qos=long,--constraint=a100).")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Each evaluate: subgroups by these columns of the data's CSVs or --groups.")] = None,
    age_bins: Annotated[Optional[str], typer.Option("--age-bins", help="With --by Age: interval edges, e.g. 0,40,60,80,200.")] = None,
    groups: Annotated[Optional[Path], typer.Option("--groups", help="A CSV of subgroup columns keyed by Path.")] = None,
    external: Annotated[Optional[list[str]], typer.Option("--external", help="External sets (SET:DIR or folders; repeatable or a comma list) every run is also evaluated on (all rows); `report` compares them with the internal results.")] = None,
    calibration: Annotated[bool, typer.Option("--calibration/--no-calibration", help="Each evaluate: Brier, ECE, recalibration slope.")] = True,
    track: TrackOpt = None,
    track_models: Annotated[bool, typer.Option("--track-models/--track-no-models", help="With --track: upload each run's best model.")] = True,
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
):
    """Write a study plan; extra options after the known ones go to every finetune (e.g. --recipe fast)."""
    import chexcut.cli.ui as ui
    from chexcut.data.datasets import split_ref
    from chexcut.models.registry import PAPER_ARCHS
    from chexcut.models.sources import licence_notes
    from chexcut.study.plan import Grid, Slurm, plan_study
    from chexcut.tracking import ENV_URI, absolute_uri, require_mlflow

    track = track or os.environ.get(ENV_URI)
    if track:  # every run logs to one experiment named after the study folder
        require_mlflow()
    options = _finetune_options(list(ctx.args), data,
                                {"uri": absolute_uri(track), "log_models": track_models} if track else None)
    data = split_ref(data)[0]
    grid = Grid(archs=tuple(split_list(archs, "--archs")) if archs is not None else PAPER_ARCHS,
                weights=tuple(split_list(weights, "--weights")),
                drops=tuple(ints(drops, "drops")), seeds=tuple(ints(seeds, "seeds")))
    cluster = Slurm(gpus_per_task=gpus_per_task, nodes=nodes, extra=tuple(split_list(sbatch, "--sbatch") or ()),
                    cpus_per_task=cpus_per_task, time=time, partition=partition, account=account, mem=mem,
                    signal_before=signal_before, requeue=requeue)
    try:
        bins = [float(x) for x in split_list(age_bins, "--age-bins")] if age_bins is not None else None
    except ValueError:
        raise ChexcutError(f"--age-bins takes numbers separated by commas, not {age_bins!r}") from None
    plan = plan_study(out, data, grid, options, bootstrap=bootstrap, bench=bench, slurm=cluster if slurm else None,
                      force=force, evaluate_options={"by": split_list(by, "--by") or [], "age_bins": bins,
                                                     "groups": groups, "calibration": calibration,
                                                     "external": split_repeated(external, "--external")})
    if json_out:
        ui.print_json(plan)
        return
    ui.err.print(f"planned {len(plan['runs'])} runs in {out}: run.sh, commands.txt, plan.json"
                 + (", study.sbatch" if slurm else ""))
    for s in plan["skipped"]:
        ui.err.print(f"skipped {s}")
    for note in licence_notes(plan["weights"]):
        ui.err.print(f"[yellow]note:[/] {note}")
    ui.err.print(f"next: chexcut study run {out} --jobs N   (or bash {out}/run.sh"
                 + (f", or sbatch {out}/study.sbatch)" if slurm else ")"))


def _finetune_options(args: list[str], data: Path, track: dict | None = None):
    """The options a plan passes to every finetune, parsed by finetune's own parser at plan time."""
    import click

    from chexcut.cli.train import finetune_options

    command = typer.main.get_command(app).commands["finetune"]
    try:
        ctx = command.make_context("finetune", ["resnet18", "--data", str(data), "--out", "x", *args],
                                   resilient_parsing=False)
    except click.UsageError as e:
        msg = " ".join(e.format_message().replace("Value error, ", "").split())
        raise ChexcutError(f"an option for the runs' finetune is wrong: {msg}") from None
    placeholders = {"model", "data", "out"}  # given above to satisfy the parser; the study sets them
    given = {p.name for p in command.params if ctx.get_parameter_source(p.name).name != "DEFAULT"} - placeholders
    return finetune_options(ctx.params, given, track)


@study_app.command("run")
def study_run(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", **bound("jobs"), help="Runs at once (one GPU each when there are GPUs).")] = 1,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Execute a plan locally with a live status table; failures never stop the other runs."""
    import chexcut.cli.ui as ui
    from chexcut.study.runner import run_plan

    with ui.StudyStatus(study_dir, quiet=quiet) as update:
        all_jobs = run_plan(study_dir, jobs=jobs, on_update=update)
    failed = [j for j in all_jobs if j.status == "failed"]
    if not quiet:
        ui.err.print(ui.study_summary(all_jobs, study_dir))
    if failed:
        raise typer.Exit(1)


@study_app.command("exec")
def study_exec(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    run_id: Annotated[Optional[str], typer.Argument(help="The planned run's id (or give --index).")] = None,
    index: Annotated[Optional[int], typer.Option("--index", min=0, help="The run at this 0-based position of the plan (a Slurm array's task id).")] = None,
    step: Annotated[str, typer.Option("--step", help="all (finetune or resume, bench, evaluate) or finetune (each rank of a distributed launch).")] = "all",
    launcher: Annotated[Optional[str], typer.Option("--launcher", help="Start the finetune under this launcher, e.g. 'torchrun --standalone --nproc_per_node 4' (study.sbatch sets it).")] = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No status line."),
):
    """Execute one planned run from plan.json: what run.sh, study.sbatch and `study run` call. Done runs are
    skipped, interrupted ones resumed; the run's output goes to its log.txt."""
    import contextlib
    import traceback

    import chexcut.cli.ui as ui
    from chexcut.rundir import RunDir
    from chexcut.study.execute import check_launcher, check_step, execute, find_run
    from chexcut.study.plan import load_plan

    check_step(step)
    check_launcher(launcher, step, study_dir)
    plan = load_plan(study_dir)
    run = find_run(plan, run_id, index)
    if step == "finetune":  # a rank of a distributed launch: its output goes where the launching exec sends it
        execute(study_dir, run, plan, step=step)
        return
    log_path = RunDir(study_dir / run["run_dir"]).log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    error = None
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            status = execute(study_dir, run, plan, launcher=launcher, log=log)
        except KeyboardInterrupt:
            from chexcut.cli.main import report_interrupted

            report_interrupted()  # the line in the run's log too (the status and the Slurm integration read it)
            raise
        except ChexcutError as e:
            error = str(e)
            print(f"chexcut: error: {e}", flush=True)
        except Exception as e:
            error = f"internal error: {type(e).__name__}: {e}"
            traceback.print_exc()
    if error is not None:
        ui.err.print(f"chexcut: run {run['id']} failed: {error} (log: {log_path})", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if not quiet:
        ui.err.print(f"{run['id']}: {status} (log: {log_path})", markup=False, soft_wrap=True)


@study_app.command("status")
def study_status(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the status JSON to PATH, or - for stdout.")] = None,
    watch: Annotated[Optional[float], typer.Option("--watch", help="Refresh every N seconds until Ctrl-C.")] = None,
):
    """Where every planned run stands (queued, running, stalled, interrupted, failed, done), from its folder alone."""
    import math
    import time

    import chexcut.cli.ui as ui
    from chexcut.fileio import check_output_file, write_json
    from chexcut.study.status import study_status as status_of

    if watch is not None and (not math.isfinite(watch) or watch <= 0 or json_path == "-"):
        raise ChexcutError("--watch takes a number of seconds > 0, and not with --json -")
    if json_path and json_path != "-":
        from chexcut.rundir import files_read_under

        check_output_file(Path(json_path), "--json", inputs=files_read_under([study_dir]))
    res = status_of(study_dir)
    if json_path == "-":
        ui.print_json(res)
        return
    if json_path:
        write_json(Path(json_path), res)
    if watch is None:
        ui.out.print(ui.study_status_table(res))
        return
    from rich.live import Live

    with Live(ui.study_status_table(res), console=ui.out, auto_refresh=False) as live:
        while True:
            time.sleep(watch)
            live.update(ui.study_status_table(status_of(study_dir)), refresh=True)


@app.command()
def report(
    targets: Annotated[list[Path], typer.Argument(help="Study folders or run directories.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write report.md, results.csv, results.json and PNG plots here.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", **bound("bootstrap"), help="Replicates for the paired comparisons.")] = 1000,
    alpha: Annotated[float, typer.Option("--alpha")] = 0.05,
    margin: Annotated[float, typer.Option("--margin", help="Non-inferiority margin (AUROC units) for parameter efficiency.")] = 0.02,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"))] = 0,
    json_path: Annotated[Optional[str], typer.Option("--json", help="- prints the report JSON to stdout.")] = None,
    about: Annotated[Optional[Path], typer.Option("--about", help="With --out and one study: the model card's YAML (intended use, limitations, reference standard, ...).")] = None,
):
    """Turn many runs into the CheXtransfer findings: tables, correlations, parameter efficiency, plots."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation.settings import check_parameters
    from chexcut.study.findings import build_report
    from chexcut.study.render import write_outputs

    check_parameters(bootstrap=bootstrap, alpha=alpha, margin=margin)
    if out:
        from chexcut.fileio import check_output_folder
        from chexcut.rundir import run_folders_under

        check_output_folder(out, "report folder")
        inside = [r for r in run_folders_under(targets) if r.resolve() == out.resolve() or r.resolve() in
                  out.resolve().parents]
        if inside:
            raise ChexcutError(f"--out {out} is inside the run {inside[0]}, which this report reads; write the "
                               f"report elsewhere (e.g. beside the runs)")
    if json_path and json_path != "-":
        from chexcut.fileio import check_output_file
        from chexcut.rundir import files_read_under

        check_output_file(Path(json_path), "--json", inputs=files_read_under(targets))
    from chexcut.study.about import read_about
    from chexcut.study.plan import PLAN

    about_text = read_about(about)
    rep = build_report(targets, bootstrap=bootstrap, alpha=alpha, seed=seed, margin=margin)
    if out:
        study = targets[0] if len(targets) == 1 and (targets[0] / PLAN).is_file() else None
        written = write_outputs(rep, out, card_of=study, about=about_text)
        ui.err.print(f"wrote {', '.join(p.name for p in written)} to {out}")
    if json_path == "-":
        ui.print_json(rep)
    elif json_path:
        from chexcut.fileio import write_json

        write_json(Path(json_path), rep)
    if json_path != "-":
        for t in ui.report_tables(rep):
            ui.out.print(t)


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the phantom data, study and report.")] = Path("chexcut-demo"),
    archs: Annotated[str, typer.Option("--archs")] = ",".join(Demo.archs),
    drops: Annotated[str, typer.Option("--drops")] = ",".join(map(str, Demo.drops)),
    n: Annotated[int, typer.Option("--n", help="Phantom images.")] = Demo.n,
    image_size: Annotated[int, typer.Option("--image-size", **bound("image_size"))] = Demo.image_size,
    epochs: Annotated[int, typer.Option("--epochs", **bound("epochs"))] = Demo.epochs,
    bootstrap: Annotated[int, typer.Option("--bootstrap", **bound("bootstrap"))] = Demo.bootstrap,
    jobs: Annotated[int, typer.Option("--jobs", **bound("jobs"), help="Runs at once (1: all in this process, no import per run).")] = 1,
    seed: Annotated[int, typer.Option("--seed", **bound("seed"), help="Draws the phantom data and seeds every run.")] = 0,
    offline: Annotated[bool, typer.Option("--offline", help="Never try the network for ImageNet weights.")] = False,
    mirror: Annotated[Optional[str], typer.Option("--mirror", envvar="CHEXCUT_WEIGHTS_MIRROR", help="Fetch ImageNet weights from this folder or URL (see `weights fetch --to`).")] = None,
):
    """The whole study on phantom data: weights, generate, plan, fine-tune, evaluate, report (CPU: ~3 minutes)."""
    import chexcut.cli.ui as ui
    from chexcut.demo import run_demo

    demo = Demo(archs=tuple(split_list(archs, "--archs") or ()), drops=tuple(ints(drops, "drops")), n=n, image_size=image_size,
                epochs=epochs, bootstrap=bootstrap, seed=seed)
    rep, paths = run_demo(folder, demo, jobs=jobs, offline=offline, mirror=mirror,
                          say=lambda text: ui.err.print(text, markup=False, highlight=False),
                          progress=lambda what, total: ui.progress_bar(what, total),
                          status=lambda study: ui.StudyStatus(study))
    for t in ui.report_tables(rep):
        ui.out.print(t)
    ui.err.print(f"report: {paths['report']}/report.md (plots, results.csv, results.json beside it)")


@app.command()
def card(
    target: Annotated[Path, typer.Argument(help="A finetune run (evaluated: eval.json) or a study folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The card's Markdown file (figures go to OUT_STEM_files/).")],
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML card here.")] = None,
    about: Annotated[Optional[Path], typer.Option("--about", help="YAML with what only the authors know: intended_use, intended_users, out_of_scope, limitations, reference_standard, annotators, ethics, funding, ...")] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Also write the card as JSON to PATH, or - for stdout.")] = None,
):
    """A model card filled from the run: data, model, training, selection, statistics, results (internal, external,
    subgroups, calibration, operating points, decision curves, failures), software, how to reproduce; and the
    CLAIM and TRIPOD+AI checklists saying where each item is answered or that it needs the authors."""
    import chexcut.cli.ui as ui
    from chexcut.fileio import check_outputs, write_json
    from chexcut.rundir import files_read_under, run_folders_under
    from chexcut.study.about import read_about
    from chexcut.study.card import write_card

    reads = files_read_under([target]) + ([about] if about is not None else [])
    check_outputs([(out, "--out"), (html, "--html"), (json_path, "--json")], inputs=reads,
                  protected=run_folders_under([target]))
    from chexcut.study.render import make_plots

    card = write_card(target, out, read_about(about), html=html, extra_images=make_plots)
    if json_path == "-":
        ui.print_json(card)
    elif json_path:
        write_json(Path(json_path), card)
    missing = sum(i["where"] == "needs the authors" for cl in card["checklists"].values() for i in cl["items"])
    ui.err.print(f"wrote {out}" + (f" and {html}" if html else "") + f"; {missing} checklist items need the authors")
