"""``study plan``, ``study run``, ``report`` and ``demo``: many runs, and the paper's findings from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chexcut.choices import Blank, Cluster, Level, Method, Precision, Recipe, Resize, Views
from chexcut.cli.app import OPT, app, check_json, data_options, emit_json, floats, ints, split_list, split_repeated
from chexcut.errors import ChexcutError
from chexcut.options import given

study_app = typer.Typer(help="Plan and run a grid of finetune + evaluate runs (locally or on Slurm).",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("plan")
def study_plan(  # longer: the grid, every finetune option, every evaluation setting and Slurm's: one parameter each
    data: Optional[Path] = OPT.data, out: Optional[Path] = OPT.out, archs: Optional[str] = OPT.archs,
    weights: Optional[str] = OPT.weights, drops: Optional[str] = OPT.drops, seeds: Optional[str] = OPT.seeds,
    adapts: Optional[str] = OPT.adapts, label_fractions: Optional[str] = OPT.label_fractions,
    force: bool = OPT.force, json: Optional[str] = OPT.json,
    # what every run's finetune takes (the grid gives the model, its weights, drop, adaptation, label fraction, seed)
    in_chans: Optional[int] = OPT.in_chans, recipe: Optional[Recipe] = OPT.recipe, epochs: Optional[int] = OPT.epochs,
    batch_size: Optional[int] = OPT.batch_size, lr: Optional[float] = OPT.lr, image_size: Optional[int] = OPT.image_size,
    val_every: Optional[int] = OPT.val_every, precision: Optional[Precision] = OPT.precision,
    channels_last: Optional[bool] = OPT.channels_last, compile: Optional[bool] = OPT.compile,
    workers: Optional[int] = OPT.workers, precise_bn: Optional[int] = OPT.precise_bn,
    layer_decay: Optional[float] = OPT.layer_decay,
    max_steps: Optional[int] = OPT.max_steps,
    log_every: Optional[int] = OPT.log_every, device: Optional[str] = OPT.device, resize: Optional[Resize] = OPT.resize,
    csv: Optional[str] = OPT.csv, path_col: Optional[str] = OPT.path_col, labels: Optional[str] = OPT.labels,
    views: Optional[Views] = OPT.views, uncertain: Optional[str] = OPT.uncertain, blank: Optional[Blank] = OPT.blank,
    valid_frac: Optional[float] = OPT.valid_frac, label_map: Optional[str] = OPT.label_map,
    images_outside: bool = OPT.images_outside, cache: Optional[Path] = OPT.cache, skip_missing: bool = OPT.skip_missing,
    # what every run's evaluate takes (each run's seed is its evaluation's; a margin is report's: it compares runs)
    bootstrap: Optional[int] = OPT.bootstrap, ci: Optional[float] = OPT.ci, cluster: Optional[Cluster] = OPT.cluster,
    level: Optional[Level] = OPT.level, method: Optional[Method] = OPT.method, alpha: Optional[float] = OPT.alpha,
    by: Optional[str] = OPT.by,
    age_bins: Optional[str] = OPT.age_bins, groups: Optional[Path] = OPT.groups,
    calibration: Optional[bool] = OPT.calibration, at_specificity: Optional[list[str]] = OPT.at_specificity,
    at_sensitivity: Optional[list[str]] = OPT.at_sensitivity, decision_curve: Optional[bool] = OPT.decision_curve,
    prevalence_matched: Optional[bool] = OPT.prevalence_matched, failures: Optional[int] = OPT.failures,
    external: Optional[list[str]] = OPT.external, bench: bool = OPT.bench,
    # Slurm
    slurm: bool = OPT.slurm, nodes: Optional[int] = OPT.nodes, gpus_per_task: Optional[int] = OPT.gpus_per_task,
    cpus_per_task: Optional[int] = OPT.cpus_per_task, time: Optional[str] = OPT.time,
    partition: Optional[str] = OPT.partition, account: Optional[str] = OPT.account, mem: Optional[str] = OPT.mem,
    signal_before: Optional[int] = OPT.signal_before, requeue: Optional[bool] = OPT.requeue,
    sbatch: Optional[str] = OPT.sbatch,
    # MLflow
    track: Optional[str] = OPT.track, track_models: bool = OPT.track_models,
    track_experiment: Optional[str] = OPT.track_experiment, track_tag: Optional[list[str]] = OPT.track_tag,
):
    """Write a study plan: a run per cell of the grid, each fine-tuned and evaluated with the options given here."""
    import dataclasses

    import chexcut.cli.ui as ui
    from chexcut.data.datasets import split_ref
    from chexcut.evaluation.settings import Statistics
    from chexcut.models.sources import licence_notes
    from chexcut.study.plan import Grid, plan_study
    from chexcut.study.slurm import Slurm
    from chexcut.tracking import study_tracking
    from chexcut.training.config import FinetuneOptions

    check_json(json, inputs=[f for f in (csv, label_map, groups) if f],  # never over what the plan reads or writes
               protected=[split_ref(data)[0], out, *(split_ref(e)[0] for e in split_repeated(external, "--external"))])
    opts = data_options(data, csv, path_col, labels, views, uncertain, blank, valid_frac, label_map, images_outside)
    options = FinetuneOptions(
        train=given(recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                    val_every=val_every, precision=precision, channels_last=channels_last, compile=compile,
                    workers=workers, precise_bn=precise_bn, layer_decay=layer_decay, max_steps=max_steps, log_every=log_every, device=device, resize=resize),
        data=dataclasses.replace(opts, **given(csv=csv and Path(csv).exists() and str(Path(csv).resolve()) or None)),
        cache=str(cache.resolve()) if cache else None, skip_missing=skip_missing,
        track=study_tracking(track, track_models, track_experiment, track_tag), in_chans=in_chans)
    statistics = Statistics(**given(
        bootstrap=bootstrap, ci=ci, cluster=cluster, method=method, alpha=alpha, level=level, by=split_list(by, "--by"), age_bins=floats(age_bins, "--age-bins"),
        calibration=calibration, at_specificity=split_repeated(at_specificity, "--at-specificity"),
        at_sensitivity=split_repeated(at_sensitivity, "--at-sensitivity"), decision_curve=decision_curve,
        prevalence_matched=prevalence_matched, failures=failures))
    grid = Grid(**given(archs=split_list(archs, "--archs"), weights=split_list(weights, "--weights"),
                        drops=drops and ints(drops, "drops"), seeds=seeds and ints(seeds, "seeds"),
                        adapts=split_list(adapts, "--adapts"),
                        label_fractions=floats(label_fractions, "--label-fractions")))
    cluster_settings = Slurm(**given(
        gpus_per_task=gpus_per_task, nodes=nodes, extra=split_list(sbatch, "--sbatch"), cpus_per_task=cpus_per_task,
        time=time, partition=partition, account=account, mem=mem, signal_before=signal_before, requeue=requeue))
    plan = plan_study(out, split_ref(data)[0], grid, options, statistics=statistics, bench=bench,
                      slurm=cluster_settings if slurm else None, force=force,
                      evaluate_options={"groups": groups, "external": split_repeated(external, "--external")})
    emit_json(json, plan)
    if json == "-":
        return
    ui.err.print(f"planned {len(plan['runs'])} runs in {out}: run.sh, commands.txt, plan.json"
                 + (", study.sbatch" if slurm else ""))
    for s in plan["skipped"]:
        ui.err.print(f"skipped {s}")
    for note in licence_notes(plan["weights"]):
        ui.err.print(f"[yellow]note:[/] {note}")
    ui.err.print(f"next: chexcut study run {out} --jobs N   (or bash {out}/run.sh"
                 + (f", or sbatch {out}/study.sbatch)" if slurm else ")"))


@study_app.command("run")
def study_run(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    jobs: int = OPT.jobs, quiet: bool = OPT.quiet,
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
    index: Optional[int] = OPT.index, step: str = OPT.step, launcher: Optional[str] = OPT.launcher,
    quiet: bool = OPT.quiet,
):
    """Execute one planned run from plan.json: what run.sh, study.sbatch and `study run` call. Done runs are
    skipped, interrupted ones resumed; the run's output goes to its log.txt."""
    import chexcut.cli.ui as ui
    from chexcut.study.execute import check_launcher, check_step, execute, execute_logged, find_run
    from chexcut.study.plan import load_plan

    check_step(step)
    check_launcher(launcher, step, study_dir)
    plan = load_plan(study_dir)
    run = find_run(plan, run_id, index)
    if step == "finetune":  # a rank of a distributed launch: its output goes where the launching exec sends it
        execute(study_dir, run, plan, step=step)
        return
    status, error, log_path = execute_logged(study_dir, run, plan, launcher)
    if error is not None:
        ui.err.print(f"chexcut: run {run['id']} failed: {error} (log: {log_path})", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if not quiet:
        ui.err.print(f"{run['id']}: {status} (log: {log_path})", markup=False, soft_wrap=True)


@study_app.command("status")
def study_status(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by `chexcut study plan`.")],
    json: Optional[str] = OPT.json, watch: Optional[float] = OPT.watch,
):
    """Where every planned run stands (queued, running, stalled, interrupted, failed, done), from its folder alone."""
    import math
    import time

    import chexcut.cli.ui as ui
    from chexcut.rundir import files_read_under
    from chexcut.study.status import study_status as status_of

    if watch is not None and (not math.isfinite(watch) or watch <= 0 or json == "-"):
        raise ChexcutError("--watch takes a number of seconds > 0, and not with --json -")
    check_json(json, inputs=files_read_under([study_dir]))
    res = status_of(study_dir)
    emit_json(json, res)
    if json == "-":
        return
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
    out: Optional[Path] = OPT.out, bootstrap: Optional[int] = OPT.bootstrap, alpha: Optional[float] = OPT.alpha,
    margin: Optional[float] = OPT.margin, target_auroc: Optional[float] = OPT.target_auroc, seed: int = OPT.seed,
    json: Optional[str] = OPT.json, about: Optional[Path] = OPT.about,
):
    """Turn many runs into the CheXtransfer findings: tables, correlations, parameter efficiency, plots."""
    import chexcut.cli.ui as ui
    from chexcut.evaluation.settings import check_parameters
    from chexcut.study.findings import build_report
    from chexcut.study.render import write_outputs

    settings = given(bootstrap=bootstrap, alpha=alpha, margin=margin)
    check_parameters(**settings)
    if out:
        from chexcut.fileio import check_output_folder
        from chexcut.rundir import run_folders_under

        check_output_folder(out, "report folder")
        inside = [r for r in run_folders_under(targets) if r.resolve() == out.resolve() or r.resolve() in
                  out.resolve().parents]
        if inside:
            raise ChexcutError(f"--out {out} is inside the run {inside[0]}, which this report reads; write the "
                               f"report elsewhere (e.g. beside the runs)")
    from chexcut.rundir import files_read_under

    check_json(json, inputs=files_read_under(targets))
    from chexcut.study.about import read_about
    from chexcut.study.plan import PLAN

    about_text = read_about(about)
    rep = build_report(targets, seed=seed, target_auroc=target_auroc, **settings)
    if out:
        study = targets[0] if len(targets) == 1 and (targets[0] / PLAN).is_file() else None
        written = write_outputs(rep, out, card_of=study, about=about_text)
        ui.err.print(f"wrote {', '.join(p.name for p in written)} to {out}")
    emit_json(json, rep)
    if json != "-":
        for t in ui.report_tables(rep):
            ui.out.print(t)


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the phantom data, study and report.")] = Path("chexcut-demo"),
    archs: Optional[str] = OPT.archs, drops: Optional[str] = OPT.drops, n: Optional[int] = OPT.n,
    image_size: Optional[int] = OPT.image_size, epochs: Optional[int] = OPT.epochs,
    bootstrap: Optional[int] = OPT.bootstrap, jobs: int = OPT.jobs, seed: int = OPT.seed, offline: bool = OPT.offline,
    mirror: Optional[str] = OPT.mirror,
):
    """The whole study on phantom data: weights, generate, plan, fine-tune, evaluate, report (CPU: ~3 minutes)."""
    import chexcut.cli.ui as ui
    from chexcut.demo import Demo, run_demo

    demo = Demo(**given(archs=split_list(archs, "--archs"), drops=drops and ints(drops, "drops"), n=n,
                        image_size=image_size, epochs=epochs, bootstrap=bootstrap), seed=seed)
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
    out: Optional[Path] = OPT.out, html: Optional[Path] = OPT.html, about: Optional[Path] = OPT.about,
    json: Optional[str] = OPT.json,
):
    """A model card filled from the run: data, model, training, selection, statistics, results (internal, external,
    subgroups, calibration, operating points, decision curves, failures), software, how to reproduce; and the
    CLAIM and TRIPOD+AI checklists saying where each item is answered or that it needs the authors."""
    import chexcut.cli.ui as ui
    from chexcut.fileio import check_outputs
    from chexcut.rundir import files_read_under, run_folders_under
    from chexcut.study.about import read_about
    from chexcut.study.card import write_card

    reads = files_read_under([target]) + ([about] if about is not None else [])
    check_outputs([(out, "--out"), (html, "--html"), (json, "--json")], inputs=reads,
                  protected=run_folders_under([target]))
    from chexcut.study.render import make_plots

    card = write_card(target, out, read_about(about), html=html, extra_images=make_plots)
    emit_json(json, card)
    missing = sum(i["where"] == "needs the authors" for cl in card["checklists"].values() for i in cl["items"])
    ui.err.print(f"wrote {out}" + (f" and {html}" if html else "") + f"; {missing} checklist items need the authors")
