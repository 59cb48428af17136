"""A study: the grid of runs (arch x weights x drop x adaptation x label fraction x seed) as a plan, a shell script, a Slurm array.

``plan`` writes ``STUDY_DIR/plan.json`` (every run and the typed options they share), ``run.sh`` (runs every
planned run in turn), ``commands.txt`` (one command per run, for any scheduler) and, with ``slurm``,
``study.sbatch`` (one array task per run). Every script line is ``chexcut study exec . --index N``: the one
executor (:mod:`chexcut.study.execute`) reads the run from plan.json, so no script holds a user-supplied
string. Every run lives in ``STUDY_DIR/runs/ID/`` (a finetune run directory) and ends with ``eval.json`` +
``predictions.csv``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.evaluation.settings import Statistics
from chexcut.fileio import write_json, write_text
from chexcut.models.registry import PAPER_ARCHS, get_arch
from chexcut.reading import read_json
from chexcut.study.external import check_external_sets, external_sets
from chexcut.study.slurm import Slurm, sbatch_script, single_node_launcher
from chexcut.training.config import FinetuneOptions

WEIGHTS = ("imagenet", "none")
PLAN = "plan.json"  # the study folder's plan; run directories live under runs/
PLAN_VERSION = 4  # 2: runs hold no command lines; the typed options are the plan's. 3: every evaluation setting
#: (``statistics``), ``bootstrap`` and the subgroup settings of version 2 among them. 4: each run's ``adapt`` and
#: ``label_fraction`` (grid axes; a version 3 plan's shared ones move into its runs). Versions 2 and 3 are read.


def weights_name(weights: str) -> str:
    """imagenet, none, a pretraining source's name, or a weights file's stem: how runs and cells name their
    weights."""
    from chexcut.models.sources import parse

    named = parse(weights)
    if named is not None:
        return named[0].name
    return Path(weights).stem if Path(weights).is_file() else weights


def _checked_weights(w: str, archs: tuple[str, ...]) -> str:
    """One --weights value as the runs will read it (a file or a source's local copy by its absolute path: the
    runs start from the study folder); a source that fits none of the archs is one line."""
    from chexcut.models.sources import locate, parse

    if w in WEIGHTS:
        return w
    named = parse(w)
    if named is not None:
        source, path = named
        if not any(source.fits(a) for a in archs):
            raise ChexcutError(f"--weights {source.name} fits {', '.join(source.archs)}, none of --archs "
                               f"{', '.join(archs)}")
        if path is None and source.layout != "timm":
            locate(source, None)  # staged now, or one line saying how to stage it before any run starts
        return source.name if path is None else f"{source.name}:{locate(source, path).resolve()}"
    if not Path(w).is_file():
        raise ChexcutError(f"--weights {w!r}: use imagenet, none, a pretraining source (`chexcut weights list`) or "
                           f"a state dict file")
    return str(Path(w).resolve())


def run_id(arch: str, weights: str, drop: int, seed: int, adapt: str = "full", label_fraction: float = 1.0) -> str:
    """``ARCH-WEIGHTS-dDROP[-ADAPT][-fFRACTION]-sSEED``: the adaptation and the label fraction only where they are
    not the defaults (``last:2`` is written ``last2``: no colon in a folder name)."""
    middle = ("" if adapt == "full" else f"-{adapt.replace(':', '')}") + \
        ("" if label_fraction == 1 else f"-f{label_fraction:g}")
    return f"{arch}-{weights}-d{drop}{middle}-s{seed}"


@dataclass(frozen=True)
class Grid:
    """The study's grid: every (arch, weights, drop, adaptation, label fraction, seed) cell is one run."""

    archs: tuple[str, ...] = PAPER_ARCHS
    weights: tuple[str, ...] = WEIGHTS
    drops: tuple[int, ...] = (0, 1, 2)
    seeds: tuple[int, ...] = (0,)
    adapts: tuple[str, ...] = ("full",)  # what each run trains (chexcut.training.adapt)
    label_fractions: tuple[float, ...] = (1.0,)  # the share of training patients each run learns from

    def __post_init__(self):
        for name in ("archs", "weights", "drops", "seeds", "adapts", "label_fractions"):  # lists given as tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def check(self) -> "Grid":
        archs = tuple(get_arch(a).name for a in self.archs)
        weights = tuple(_checked_weights(w, archs) for w in self.weights)
        from chexcut.models.sources import SOURCES

        for source in (SOURCES[w] for w in weights if w in SOURCES and SOURCES[w].layout == "timm"):
            both = [a for a in archs if source.fits(a)]
            if "imagenet" in weights and both:  # timm's default weights of these archs are this source's
                raise ChexcutError(f"--weights imagenet and {source.name} load the same file for {both[0]} (its "
                                   f"library's pretrained weights are {source.name}'s); give one")
        if not self.seeds or not self.drops or not archs or not self.weights or not self.adapts \
                or not self.label_fractions:
            raise ChexcutError("a study needs at least one arch, weights, drop, adaptation, label fraction and seed")
        from chexcut.choices import check_bounds
        from chexcut.data.fractions import check_fraction
        from chexcut.training.adapt import parse_adapt

        adapts = tuple(str(parse_adapt(a)) for a in self.adapts)
        fractions = tuple(check_fraction(f, "--label-fractions") for f in self.label_fractions)

        for d in self.drops:
            check_bounds("drop", d, "--drops")
        for s in self.seeds:
            check_bounds("seed", s, "--seeds")
        for option, names, given in (("--archs", archs, self.archs), ("--drops", self.drops, self.drops),
                                     ("--weights", tuple(map(weights_name, weights)), self.weights),
                                     ("--seeds", self.seeds, self.seeds), ("--adapts", adapts, self.adapts),
                                     ("--label-fractions", tuple(f"{f:g}" for f in fractions),  # as run ids
                                      self.label_fractions)):
            _refuse_repeats(option, names, given)
        return dataclasses.replace(self, archs=archs, weights=weights, adapts=adapts, label_fractions=fractions)

    def cells(self) -> tuple[list[dict], list[str]]:
        """(runs, skipped): one run per cell; drops past an arch's blocks, and ``last:K`` past the blocks a drop
        keeps, are skipped, with the reason."""
        from chexcut.models.sources import parse
        from chexcut.training.adapt import parse_adapt

        runs, skipped = [], []
        for arch in self.archs:
            n_blocks = get_arch(arch).family.num_blocks
            for w in self.weights:
                named = parse(w)
                if named is not None and not named[0].fits(arch):  # a source fits the archs it was trained as
                    skipped.append(f"{arch} with {named[0].name} (it fits {', '.join(named[0].archs)})")
                    continue
                for d in self.drops:
                    if d > n_blocks - 1:
                        skipped.append(f"{arch} drop {d} (only {n_blocks} blocks)")
                        continue
                    for adapt in self.adapts:
                        if parse_adapt(adapt).blocks > n_blocks - d:
                            skipped.append(f"{arch} drop {d} --adapt {adapt} (it keeps {n_blocks - d} block"
                                       f"{'' if n_blocks - d == 1 else 's'})")
                            continue
                        for f, s in itertools.product(self.label_fractions, self.seeds):
                            rid = run_id(arch, weights_name(w), d, s, adapt, f)
                            runs.append({"id": rid, "arch": arch, "weights": w, "drop": d, "adapt": adapt,
                                         "label_fraction": f, "seed": s, "run_dir": f"runs/{rid}"})
        return runs, skipped


def _refuse_repeats(option: str, names: tuple, given: tuple) -> None:
    """Two values of one grid axis naming the same runs (``--seeds 1,1``; an arch and another spelling of it; two
    weights files with one stem, or one stemmed ``imagenet``): the plan would hold two runs of one id in one folder,
    and every executor would run only the first. One line naming the option and the values."""
    seen: dict = {}
    for name, value in zip(names, given):
        if name in seen:
            first = seen[name]
            raise ChexcutError(f"{option} lists {value} twice; give each value once" if str(first) == str(value) else
                               f"{option} lists {first} and {value}, which name the same runs ({name}); give one")
        seen[name] = value


def repeated_run(runs: list[dict]) -> tuple[int, int] | None:
    """(first, later) positions of two runs with one id, or None: a run id names one run and one folder."""
    seen: dict = {}
    for i, r in enumerate(runs):
        if r["id"] in seen:
            return seen[r["id"]], i
        seen[r["id"]] = i
    return None


def plan_study(out: Path, data: Path, grid: Grid = Grid(), options: FinetuneOptions = FinetuneOptions(), *,
               statistics: Statistics = Statistics(), bench: bool = False, slurm: Slurm | None = None,
               force: bool = False, evaluate_options: dict | None = None) -> dict:
    """Write the plan and its scripts; returns the plan. ``options`` go to every finetune and ``statistics`` to
    every evaluate (checked when they were made; each run's own seed is its evaluation's); ``bench``: each run
    also measures its model's latency and throughput (RUN/bench.json) before it is evaluated; ``slurm``: also
    write study.sbatch; ``evaluate_options`` (:func:`check_evaluate_options`): the subgroup CSV and the external
    sets of every evaluate."""
    data = Path(data)
    evaluate_options = check_evaluate_options(evaluate_options or {})
    check_statistics(statistics)
    if not data.exists():
        raise ChexcutError(f"--data {data} does not exist")
    grid = grid.check()
    _check_sizes(grid, options)
    _check_data(data, options)
    check_external_sets(data, evaluate_options["external"], options)
    if (Path(out) / PLAN).exists() and not force:
        raise ChexcutError(f"{out} already holds a study plan; pass --force to plan over it (runs already done "
                           f"are kept and skipped when their settings match)")
    from chexcut.fileio import check_output_folder

    runs, skipped = grid.cells()
    if not runs:
        raise ChexcutError(f"no runs to plan: {'; '.join(dict.fromkeys(skipped)) or 'empty grid'}")
    if repeated_run(runs):  # the grid's values are unique (Grid.check); a run id names one run all the same
        raise ChexcutError(f"the grid names the run {runs[repeated_run(runs)[1]]['id']} twice; give each value once")
    out = check_output_folder(Path(out), "study folder")
    out.mkdir(parents=True, exist_ok=True)
    plan = {"format": "chexcut-study", "version": PLAN_VERSION, "data": str(data.resolve()),
            "archs": list(grid.archs), "weights": list(grid.weights), "drops": list(grid.drops),
            "seeds": list(grid.seeds), "adapts": list(grid.adapts), "label_fractions": list(grid.label_fractions),
            "finetune_options": options.to_json(), "statistics": plan_statistics(statistics), "bench": bench,
            "evaluate_options": evaluate_options, "runs": runs, "skipped": skipped}
    _refuse_changed_runs(out, plan)
    write_json(out / PLAN, plan)
    write_text(out / "run.sh", run_script(len(runs)))
    os.chmod(out / "run.sh", 0o755)
    gpus = slurm.gpus_per_task if slurm else 1
    launcher = f" --launcher {single_node_launcher(gpus)!r}" if gpus > 1 else ""
    write_text(out / "commands.txt", "".join(f"chexcut study exec . --index {i}{launcher}\n" for i in range(len(runs))))
    if slurm:
        write_text(out / "study.sbatch", sbatch_script(len(runs), slurm))
    return plan


def _check_sizes(grid: Grid, options: FinetuneOptions) -> None:
    """Every adaptation can run here (``lora:R`` needs peft), and every architecture takes the runs' settings: the
    image size (a /14 ViT takes no 320 given by hand, a Swin's windows a multiple of 32) and ``--layer-decay`` (only
    families with layers): refused now, in one line, not in each run's first step."""
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.registry import get_arch
    from chexcut.training.config import fit_to_arch

    for adapt in grid.adapts:  # what an adaptation needs is there (lora:R: peft, an extra)
        options.train_config(seed=0, adapt=adapt)
    for arch in grid.archs:
        cfg = options.train_config(seed=0)
        try:
            fit_to_arch(cfg, get_arch(arch))  # --layer-decay for a family that has layers; the recipe's size fitted
            check_image_size(arch, cfg.image_size)
        except ChexcutError as e:
            raise ChexcutError(f"--archs {arch}: {e}") from None


def _check_data(data: Path, options: FinetuneOptions) -> None:
    """The data set as every run will read it (its CSVs, labels, views, split): a plan whose runs would all fail on
    it (``--labels 'Edema,Shoe size'``, a missing CSV) is refused now, not after a cluster's queue."""
    from chexcut.data.tables import load_split

    try:
        load_split(data, "all", options.data)
    except ChexcutError as e:
        raise ChexcutError(f"the runs could not read --data {data}: {e}") from None


def plan_options(plan: dict) -> FinetuneOptions:
    """The typed finetune options every run of the plan shares."""
    return FinetuneOptions.from_json(plan["finetune_options"])


def plan_settings(plan: dict) -> dict:
    """What decides a run's results besides its grid cell: a re-plan with other settings changes every run."""
    settings = {k: plan.get(k) for k in ("data", "finetune_options", "bench", "evaluate_options")}
    return {**settings, "statistics": plan_statistics(run_statistics(plan, 0))}  # every setting, defaults filled


def _refuse_changed_runs(out: Path, plan: dict) -> None:
    """A re-plan (``--force``) with other settings: runs that already hold results from the old settings would be
    kept as done by every runner. Refuse, naming them, rather than mix two sets of settings in one study."""
    try:
        old = upgraded(read_json(out / PLAN))
        old_runs = {r["id"]: {k: r.get(k) for k in RUN_FIELDS} for r in old.get("runs", [])}
        same = plan_settings(old) == plan_settings(plan)
    except (ChexcutError, AttributeError, TypeError, KeyError, ValueError):
        return
    # a kept folder whose run differs: the settings all runs share, or its own cell (a format-3 plan's --adapt
    # lora:4 run has the id a format-4 plan gives its full fine-tuning)
    changed = [r["id"] for r in plan["runs"] if r["id"] in old_runs and any((out / r["run_dir"]).glob("*"))
               and (not same or old_runs[r["id"]] != {k: r.get(k) for k in RUN_FIELDS})]
    if changed:
        raise ChexcutError(f"{len(changed)} runs of {out} hold results from other settings (first: {changed[0]}); remove "
                           f"their folders (rm -r {out}/runs/{changed[0]} ...) or plan into a new folder")


def check_statistics(statistics: Statistics) -> None:
    """What a study's evaluations need beyond :class:`Statistics`' own checks: no comparison's margin (each run is
    evaluated alone; ``report`` compares them), ages in bins."""
    if statistics.margin is not None:
        raise ChexcutError("--margin tests a comparison, and a study evaluates each run alone: give it to `chexcut "
                           "report --margin M`, which compares the runs")
    if "Age" in statistics.by and not statistics.age_bins:
        raise ChexcutError("--by Age needs --age-bins EDGES (e.g. 0,40,60,80,200)")


def plan_statistics(statistics: Statistics) -> dict:
    """The plan's record of every evaluation setting, without the seed (each run's evaluation uses its own)."""
    return {k: v for k, v in statistics.to_json().items() if k != "seed"}


def run_statistics(plan: dict, seed: int) -> Statistics:
    """The statistics of one run's evaluation: the plan's, with the run's seed."""
    return Statistics.from_json({**plan["statistics"], "seed": seed})


def upgraded(plan: dict) -> dict:
    """A plan of an earlier version read as this one's: version 2's ``bootstrap`` and subgroup settings are its
    statistics (version 3); version 3's shared ``adapt`` and ``label_fraction`` are each run's (version 4)."""
    if plan.get("version") == 2:
        if not isinstance(plan.get("bootstrap"), int) or isinstance(plan.get("bootstrap"), bool):
            raise ChexcutError("plan.json (format 2) lacks its bootstrap count (damaged; plan the study again)")
        ev = dict(plan.get("evaluate_options") or {})
        kept = {k: ev.pop(k) for k in ("by", "age_bins", "calibration") if k in ev}
        plan = {**plan, "version": 3, "evaluate_options": ev, "statistics": {"bootstrap": plan.get("bootstrap"), **kept}}
    if plan.get("version") == 3 and isinstance(plan.get("finetune_options"), dict) and isinstance(plan.get("runs"), list):
        train = dict(plan["finetune_options"].get("train") or {})
        adapt, fraction = train.pop("adapt", "full"), train.pop("label_fraction", 1.0)
        plan = {**plan, "version": PLAN_VERSION, "finetune_options": {**plan["finetune_options"], "train": train},
                "adapts": [adapt], "label_fractions": [fraction],
                "runs": [{**r, "adapt": adapt, "label_fraction": fraction} if isinstance(r, dict) else r
                         for r in plan["runs"]]}
    return plan


def check_evaluate_options(o: dict) -> dict:
    """``{"groups": PATH | None, "external": [SET...]}``, checked as evaluate checks them (the groups CSV made
    absolute)."""
    unknown = set(o) - {"groups", "external"}
    if unknown:
        raise ChexcutError(f"unknown evaluate options: {', '.join(sorted(unknown))}")
    groups = o.get("groups")
    if groups is not None:
        if not Path(groups).is_file():
            raise ChexcutError(f"groups CSV not found: {groups}")
        groups = str(Path(groups).resolve())
    return {"groups": groups, "external": external_sets(o.get("external") or [])}


def grid_cell(r: dict) -> str:
    """The run's cell without its seed: seeds of one cell are grouped by it (e.g. in MLflow); the adaptation and the
    label fraction where they are not the defaults."""
    cell = f"{r['arch']}/{weights_name(r['weights'])}/drop{r['drop']}"
    return cell + ("" if r["adapt"] == "full" else f"/{r['adapt']}") + \
        ("" if r["label_fraction"] == 1 else f"/f{r['label_fraction']:g}")


_RUN_SH = """#!/usr/bin/env bash
# chexcut study: {n} runs, each read from plan.json by `chexcut study exec` (an evaluated run is skipped, one with
# a checkpoint resumed; each run's output goes to its runs/ID/log.txt). Run from anywhere; CHEXCUT overrides the
# command (e.g. CHEXCUT="python -m chexcut"). Ctrl-C stops after the running run saved its checkpoint.
set -u
cd "$(dirname "$0")"
CHEXCUT=${{CHEXCUT:-chexcut}}
failed=0
for i in $(seq 0 {last}); do
  $CHEXCUT study exec . --index "$i"
  rc=$?
  if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then exit "$rc"; fi
  [ "$rc" = 0 ] || failed=$((failed + 1))
done
[ "$failed" = 0 ] || echo "$failed of {n} runs failed (chexcut study status . names them)" >&2
exit $(( failed > 0 ))
"""


def run_script(n: int) -> str:
    """run.sh: every planned run in turn through the executor; no user string in it."""
    return _RUN_SH.format(n=n, last=n - 1)


RUN_FIELDS = {"id": str, "arch": str, "weights": str, "drop": int, "adapt": str, "label_fraction": (int, float),
              "seed": int, "run_dir": str}


def load_plan(study_dir: Path) -> dict:
    """plan.json, checked as one schema: its format and version, every run's fields and types (a run's folder is
    ``runs/ID``: never outside the study), the typed options and evaluate settings. One line naming what is
    wrong; a hand-edited or damaged plan never reaches the executor."""
    where = f"{study_dir}/plan.json"
    if not (Path(study_dir) / PLAN).is_file():
        raise ChexcutError(f"{study_dir} has no plan.json: run `chexcut study plan` first")
    plan = read_json(Path(study_dir) / PLAN, where)
    if not isinstance(plan, dict) or plan.get("format") != "chexcut-study" or not isinstance(plan.get("runs"), list):
        raise ChexcutError(f"{where} is not a chexcut study plan")
    plan = upgraded(plan)
    if plan.get("version") != PLAN_VERSION or not isinstance(plan.get("finetune_options"), dict):
        raise ChexcutError(f"{where} has plan format {plan.get('version')!r}, this chexcut reads format "
                           f"{PLAN_VERSION}: plan the study again (chexcut study plan ... --force)")
    for i, r in enumerate(plan["runs"]):
        bad = [k for k, t in RUN_FIELDS.items() if not isinstance(r, dict) or not isinstance(r.get(k), t)
               or isinstance(r.get(k), bool)]
        if bad:
            raise ChexcutError(f"{where}: runs[{i}] has no valid {bad[0]!r} (damaged; plan the study again)")
        if r["run_dir"] != f"runs/{r['id']}" or "/" in r["id"] or r["id"] in ("", ".", ".."):
            raise ChexcutError(f"{where}: runs[{i}] has the folder {r['run_dir']!r}; a run's folder is runs/ID "
                               f"(damaged; plan the study again)")
        try:
            Grid(adapts=(r["adapt"],), label_fractions=(r["label_fraction"],)).check()
        except ChexcutError as e:
            raise ChexcutError(f"{where}: runs[{i}]: {e} (damaged; plan the study again)") from None
    twice = repeated_run(plan["runs"])
    if twice:
        raise ChexcutError(f"{where}: runs[{twice[1]}] repeats the id {plan['runs'][twice[0]]['id']!r} of "
                           f"runs[{twice[0]}]; a run id names one run (damaged; plan the study again)")
    if not isinstance(plan.get("data"), str) or not isinstance(plan.get("statistics"), dict):
        raise ChexcutError(f"{where} lacks its data folder or evaluation settings (damaged; plan the study again)")
    try:
        FinetuneOptions.from_json(plan["finetune_options"])
        check_statistics(run_statistics(plan, 0))
        check_evaluate_options({k: v for k, v in (plan.get("evaluate_options") or {}).items() if k != "groups"})
        external_sets((plan.get("evaluate_options") or {}).get("external") or [])
    except ChexcutError as e:
        raise ChexcutError(f"{where}: {e} (damaged; plan the study again)") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ChexcutError(f"{where}: its options are damaged ({e}); plan the study again") from None
    return plan
