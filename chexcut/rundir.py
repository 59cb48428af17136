"""A finetune run directory: every file name, and the metrics log's columns, named once.

    config.json              every resolved setting, versions, dataset fingerprint, model spec
    metrics.csv              one row per log interval / validation (columns: METRICS_COLUMNS + auroc:LABEL)
    last.ckpt                model, optimizer, scheduler, scaler, RNG and data position (resume)
    best.safetensors         the best model by mean competition AUROC (a chexcut model file)
    valid_predictions.csv    the best model's validation predictions
    state.json               running | interrupted | stopped | paused | finished, and where
    .lock                    held while a process trains into the folder
    eval.json, predictions.csv, log.txt   written by a study's `chexcut evaluate` and its shell line
    bench.json               `chexcut bench RUN --json RUN/bench.json` (or `study plan --bench`)
    mlflow.json              with ``--track``: the tracking URI, experiment and MLflow run id (resume continues it)

Train, study, report and the UI ask a :class:`RunDir` for paths instead of spelling file names.
"""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.reading import read_json

CONFIG = "config.json"
METRICS = "metrics.csv"
LAST = "last.ckpt"
BEST = "best.safetensors"
VALID_PREDICTIONS = "valid_predictions.csv"
STATE = "state.json"
LOCK = ".lock"
EVAL = "eval.json"
PREDICTIONS = "predictions.csv"
EXTERNAL = "external"  # external/NAME.json and NAME-predictions.csv: evaluations on a study's --external sets
LOG = "log.txt"
BENCH = "bench.json"
LABEL_BUDGET = "label_fraction.json"  # finetune --label-fraction: the patients drawn, positives per label
TRACKING = "mlflow.json"  # the MLflow run this run logs to (``--track``)

#: What one training run writes (removed by ``finetune --force`` before it starts over).
TRAINING_FILES = (CONFIG, METRICS, LAST, BEST, VALID_PREDICTIONS, STATE, TRACKING)

#: metrics.csv columns before the per-label ``auroc:LABEL`` ones.
METRICS_COLUMNS = ("step", "epoch", "images_seen", "train_loss", "lr", "images_per_s", "gpu_mem_gb", "val_mean_auroc")


#: The files of a run that commands read (status, report, evaluate RUN, resume): never an output of theirs.
READ_FILES = (CONFIG, METRICS, LAST, BEST, VALID_PREDICTIONS, STATE, EVAL, PREDICTIONS, LOG, BENCH, TRACKING)


def files_read_under(targets) -> list[Path]:
    """Every run file (:data:`READ_FILES`) and study ``plan.json`` under ``targets`` (run directories and study
    folders): what ``study status`` and ``report`` read, so what their outputs must never be."""
    out = []
    for target in map(Path, targets):
        folders = _folders(target)
        out += [target / "plan.json"] + [f / name for f in folders for name in READ_FILES]
        out += [e for f in folders for e in sorted((f / "external").glob("*.json"))]  # external evaluations
    return [p for p in out if p.exists()]


def _folders(target: Path) -> list[Path]:
    """A target and, for a study, its ``runs/*`` folders: where a run may be."""
    return [target, *(p for p in target.glob("runs/*") if p.is_dir())] if target.is_dir() else []


def run_folders_under(targets) -> list[Path]:
    """The run directories (a ``config.json`` there) among ``targets`` and their ``runs/*``: folders a report or
    a card reads whole, where an output of theirs must never land (a stray file in ``external/`` breaks every
    later report)."""
    return [f for target in map(Path, targets) for f in _folders(target) if (f / CONFIG).is_file()]


def metrics_header(labels) -> list[str]:
    return [*METRICS_COLUMNS, *[f"auroc:{name}" for name in labels]]


def _read_json(path: Path) -> dict | None:
    try:
        value = read_json(path)
    except ChexcutError:
        return None
    return value if isinstance(value, dict) else None


class RunDir:
    """Paths and small readers for one run directory."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    last = property(lambda self: self.path / LAST)
    best = property(lambda self: self.path / BEST)
    valid_predictions = property(lambda self: self.path / VALID_PREDICTIONS)
    state = property(lambda self: self.path / STATE)
    lock = property(lambda self: self.path / LOCK)
    eval = property(lambda self: self.path / EVAL)
    predictions = property(lambda self: self.path / PREDICTIONS)
    log = property(lambda self: self.path / LOG)
    bench = property(lambda self: self.path / BENCH)
    label_budget = property(lambda self: self.path / LABEL_BUDGET)
    external = property(lambda self: self.path / EXTERNAL)

    def external_eval(self, name: str) -> Path:
        """The evaluation JSON of this run on the external set ``name`` (a study's ``--external``)."""
        return self.external / f"{name}.json"

    def external_predictions(self, name: str) -> Path:
        return self.external / f"{name}-predictions.csv"

    def external_names(self) -> list[str]:
        return sorted(p.stem for p in self.external.glob("*.json")) if self.external.is_dir() else []

    def is_run(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict | None:
        return _read_json(self.config)

    def read_state(self) -> dict:
        return _read_json(self.state) or {}

    def read_eval(self, external: str | None = None) -> dict | None:
        return _read_json(self.eval if external is None else self.external_eval(external))

    def read_bench(self) -> dict | None:
        """Latency (batch 1) and throughput of the run's model, when `chexcut bench` measured them."""
        b = _read_json(self.bench)
        try:
            level = b["levels"][0]
            return {"latency_ms": float(level["latency_ms"]["median"]),
                    "throughput_img_s": float(level["throughput_img_s"]),
                    "device": b.get("device_name") or b.get("device")}
        except (TypeError, KeyError, IndexError, ValueError):
            return None

    def last_metric(self, column: str) -> float | None:
        """``column`` of the last metrics.csv row (None when absent or empty)."""
        import csv

        try:
            with open(self.metrics, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            return None
        if not rows or not rows[-1].get(column):
            return None
        try:
            return float(rows[-1][column])
        except ValueError:
            return None


class MetricsLog:
    """metrics.csv: a header once, then one appended row per log event."""

    def __init__(self, path: Path, labels):
        self.path = Path(path)
        self.header = metrics_header(labels)

    def start(self) -> None:
        if not self.path.exists():
            self.path.write_text(",".join(f'"{h}"' if "," in h else h for h in self.header) + "\n")

    def cut_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs them again)."""
        try:
            lines = self.path.read_text().splitlines(keepends=True)
        except OSError:
            return
        keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit()
                            and int(ln.split(",", 1)[0]) <= step]
        if len(keep) != len(lines):
            from chexcut.fileio import write_text

            write_text(self.path, "".join(keep))

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(",".join("" if row.get(h) is None else str(row.get(h)) for h in self.header) + "\n")
