"""Which rows an evaluation runs on, said plainly, and a guard against evaluating on training data.

``chexcut evaluate RUN_DIR`` alone evaluates the run's own validation rows: the data folder, CSV, views,
label policies and split recorded in its ``config.json`` (and the image size and resize mode it trained
with). Any data option given beside a run selects another set, recorded as ``same-dataset`` (the run's
data folder and CSV, other options) or ``external``. Whatever the set, its rows are checked against the
run's *training* rows: shared image paths (always) or shared patients (same data set; patient ids of
another data set are unrelated numbers) stop the evaluation unless ``allow_overlap``.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir

#: Options that choose the rows (what ``--data``, ``--csv``, ... set); anything else is about inference.
DATA_OPTIONS = ("csv", "path_col", "views", "uncertain", "blank", "valid_frac", "dataset", "label_map")


@dataclass
class EvaluationSet:
    kind: str  # run-validation | same-dataset | external | unchecked
    data: Path
    split: str
    opts: object  # DataOptions
    run_dir: Path | None = None
    resize: str = "squash"
    image_size: int | None = None
    cache: Path | None = None
    differs: dict = field(default_factory=dict)  # option -> [the run's value, this set's]
    note: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "data": str(Path(self.data).resolve()), "split": self.split,
                "dataset": getattr(self.opts, "dataset", None) or "chexpert",
                "options": self.opts.to_json(), "run_dir": str(self.run_dir) if self.run_dir else None,
                "differs": self.differs, "note": self.note}

    def describe(self) -> str:
        """One line for the table header."""
        if self.kind == "run-validation":
            return f"the run's own validation set ({self.split} of {self.data}{'; ' + self.note if self.note else ''})"
        diff = ", ".join(f"{k} {b!r} (run: {a!r})" for k, (a, b) in self.differs.items())
        what = {"same-dataset": "another set of the run's data", "external": "an external data set",
                "unchecked": "a data set chosen for a model file (no run: overlap not checked)"}[self.kind]
        return f"{what}: {self.split} of {self.data}" + (f"; differs in {diff}" if diff else "")


def run_config(run_dir: Path) -> dict:
    cfg = RunDir(run_dir).read_config()
    if not cfg or "data" not in cfg or "train" not in cfg:
        raise ChexcutError(f"{run_dir}: no readable config.json with the run's data; is it a finetune run?")
    return cfg


def _fingerprint_matches(data: Path, opts, cfg: dict) -> bool:
    from chexcut.data.tables import dataset_fingerprint

    try:
        return dataset_fingerprint(Path(data), opts) == cfg["data"].get("fingerprint")
    except (ChexcutError, OSError):
        return False


def which_rows(run_dir: Path | None, data: Path | None, split: str | None, given: dict) -> EvaluationSet:
    """The evaluation set for a model from ``run_dir`` (or a bare model file when None), given the data
    options the user chose explicitly (``given``: DataOptions field -> value)."""
    from chexcut.data.tables import DataOptions

    unknown = set(given) - set(DATA_OPTIONS) - {"images_outside"}
    if unknown:
        raise ValueError(f"not data options: {sorted(unknown)}")
    if run_dir is None:
        if data is None:
            raise ChexcutError("evaluating a MODEL file needs --data DIR (a finetune run directory knows its own)")
        return EvaluationSet("unchecked", Path(data), split or "valid", DataOptions(**given))
    cfg = run_config(run_dir)
    run_data, run_opts = Path(cfg["data"]["dir"]), DataOptions.from_json(cfg["data"])
    train = cfg["train"]
    base = dict(run_dir=Path(run_dir), resize=train.get("resize", "squash"), image_size=train.get("image_size"),
                cache=Path(cfg["data"]["cache"]) if cfg["data"].get("cache") else None)
    given = dict(given)
    permitted = bool(given.pop("images_outside", False))  # a permission, not a choice of rows
    if permitted:
        run_opts = dataclasses.replace(run_opts, images_outside=True)
    if not given and split in (None, "valid"):
        if data is None:
            if not run_data.exists():
                raise ChexcutError(f"the run's data folder {run_data} (recorded in {RunDir(run_dir).config}) does "
                                   f"not exist; if the data moved, pass --data NEWDIR")
            return EvaluationSet("run-validation", run_data, "valid", run_opts, **base)
        if _fingerprint_matches(data, run_opts, cfg):  # the same CSVs and options in another place: moved
            return EvaluationSet("run-validation", Path(data), "valid", run_opts,
                                 note=f"found at {data}; recorded as {run_data}", **base)
    opts = dataclasses.replace(run_opts, **given)
    here = Path(data) if data is not None else run_data
    same = here.resolve() == run_data.resolve() and opts.csv == run_opts.csv
    differs = {k: [getattr(run_opts, k), getattr(opts, k)] for k in DATA_OPTIONS
               if getattr(run_opts, k) != getattr(opts, k)}
    if (split or "valid") != "valid":
        differs["split"] = ["valid", split]
    if not same:
        differs["data"] = [str(run_data), str(here)]
    other_set = (opts.dataset or "chexpert") != (run_opts.dataset or "chexpert")
    if split is None and not same and other_set:
        split = "all"  # a published set the run never saw: all of it, unless a split is asked for
    return EvaluationSet("same-dataset" if same else "external", here, split or "valid", opts, differs=differs,
                         **base)


def check_overlap(eval_table, es: EvaluationSet, allow: bool, run_dir: Path | None = None,
                  what: str = "the run") -> dict | None:
    """Images (by path) and, on the same data set (one folder, or two folders of one id space: a copy), patients
    shared with the training rows of the run.

    Returns the overlap record (None without a run to check against); raises unless ``allow``."""
    import numpy as np

    from chexcut.data.datasets import patients_comparable
    from chexcut.data.tables import DataOptions, load_split

    run_dir = run_dir or es.run_dir
    if run_dir is None:
        return None
    cfg = run_config(run_dir)
    run_data, run_opts = Path(cfg["data"]["dir"]), DataOptions.from_json(cfg["data"])
    if es.opts.images_outside:  # the permission given for this evaluation reaches the training rows it checks
        run_opts = dataclasses.replace(run_opts, images_outside=True)
    if not run_data.exists() and es.kind == "run-validation":
        run_data = es.data  # the data moved; its fingerprint matched
    try:
        train = load_split(run_data, "train", run_opts)
    except ChexcutError as e:
        if allow:
            return {"checked": False, "reason": str(e)}
        raise ChexcutError(f"cannot check {what}'s training rows for overlap ({e}); pass --allow-overlap to "
                           f"evaluate without the check") from None
    paths = set(train.paths)
    shared = [p for p in eval_table.paths if p in paths]
    same_folder = (es.kind == "run-validation" and Path(run_dir) == Path(es.run_dir or "")) or \
        Path(es.data).resolve() == run_data.resolve()
    # another copy of the same set (the images under new names): its patient ids are the training's
    same_data = same_folder or (not es.opts.csv and not run_opts.csv and patients_comparable(
        es.opts.dataset, eval_table.paths, run_opts.dataset, train.paths))
    patients = set(train.patient.astype(str)) if same_data else set()
    shared_patients = sorted({p for p in np.asarray(eval_table.patient).astype(str) if p in patients})
    record = {"checked": True, "images": len(shared), "patients": len(shared_patients),
              "first": shared[0] if shared else (shared_patients[0] if shared_patients else None),
              "patients_checked": same_data}
    if (shared or shared_patients) and not allow:
        raise ChexcutError(
            f"the evaluation set shares {len(shared)} images and {len(shared_patients)} patients with {what}'s "
            f"training rows (first: {record['first']}): its AUROC would be inflated. Evaluate on the run's "
            f"validation set (no data options), or pass --allow-overlap to do it anyway (flagged)")
    return record


def overlaps_training(overlap) -> bool:
    """Whether an overlap record (or a model/compare pair of them) found shared rows."""
    if not overlap:
        return False
    parts = [overlap.get("model"), overlap.get("compare")] if "compare" in overlap else [overlap]
    return any(p and (p.get("images") or p.get("patients")) for p in parts)


def files_read(model, data, files: list, readers: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """(every file an evaluation reads, the data folders it reads whole), for its output checks: no output may be
    one of the files or replace a file of those folders (a set's metadata, e.g. MIMIC's patients.csv.gz, included).
    ``model``: a run directory (its own files and its data set) or a model file; ``data``: ``--data``; ``files``
    the other files named (predictions, truth, ...); ``readers``: ``--readers`` values (FILE or NAME=FILE, comma
    lists)."""
    from chexcut.data.datasets import split_ref
    from chexcut.errors import ChexcutError
    from chexcut.reading import read_json

    files = [*files, model]
    files += [item.partition("=")[2] or item for value in readers or () for item in value.split(",") if item]
    folders = [split_ref(data)[0]] if data else []
    if model and (Path(model) / "config.json").is_file():  # a run directory: its own files and its data set
        files += [Path(model) / name for name in ("config.json", "valid_predictions.csv", "best.safetensors")]
        try:
            folders.append(read_json(Path(model) / "config.json")["data"]["dir"])
        except (ChexcutError, KeyError, TypeError):
            pass
    for folder in folders:
        for pattern in ("*.csv", "*/*.csv"):
            files += list(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    return [Path(f) for f in files if f and Path(f).is_file()], [Path(f) for f in folders if Path(f).is_dir()]


#: The data options that choose an evaluation's rows and their labels (two evaluations differing in one are not
#: on the same rows).
ROW_OPTIONS = ("views", "uncertain", "blank", "csv")


def rows_key(data, split, level, n, options: dict | None) -> str:
    """Which rows an evaluation scored, as one string: two evaluations with one key are paired row for row (the
    data folder, split, level, row count and :data:`ROW_OPTIONS` of its data options)."""
    import json

    return json.dumps({"data": data, "split": split, "level": level, "n": n,
                       "options": {k: v for k, v in (options or {}).items() if k in ROW_OPTIONS}}, sort_keys=True)
