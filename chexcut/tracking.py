"""Runs and studies in MLflow (the optional ``chexcut[track]`` extra): ``--track URI`` or
``CHEXCUT_TRACKING_URI`` on ``finetune``, ``evaluate RUN`` and ``study plan``.

What is logged: at a run's start its parameters (architecture, drop, weights, seed, recipe, image size,
resize, batch size, learning rate, epochs, data fingerprint, chexcut and library versions) and tags (study,
run id, grid cell); during training the training loss at every log row and each validation's per-label and
5-task AUROC against the step; at the end the best step and AUROC, parameters and MACs, and the run's files
(``config.json``, ``metrics.csv``, the best model unless ``log_models`` is off). ``evaluate RUN`` adds the
evaluation's 5-task and all-label AUROCs with their CI bounds, latency from ``bench.json``, and ``eval.json``.

The MLflow run id lives in the run directory (``mlflow.json``), so a resumed run, and a later evaluation,
continue the same MLflow run. Tracking never endangers a run: a failing or unreachable store is one warning
on stderr and the run goes on untracked. Only the process that writes the run directory (DDP rank 0) logs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.reading import read_json
from chexcut.rundir import TRACKING, RunDir

ENV_URI = "CHEXCUT_TRACKING_URI"
RUN_FILE = TRACKING  # in the run directory: the tracking URI, experiment and MLflow run id
DEFAULT_EXPERIMENT = "chexcut"
INSTALL_HINT = "MLflow tracking needs the optional extra: pip install 'chexcut[track]'"


@dataclass(frozen=True)
class Tracking:
    """Where and how to track: the store's URI, the experiment, extra tags, whether to upload model files."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    tags: dict = field(default_factory=dict)
    log_models: bool = True

    def to_json(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment, "tags": dict(self.tags), "log_models": self.log_models}


def parse_tags(items: list[str] | None) -> dict:
    """``--track-tag KEY=VALUE`` (repeatable) as a dict; anything else is one line."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ChexcutError(f"--track-tag takes KEY=VALUE, not {item!r}")
        out[key.strip()] = value
    return out


def study_tracking(uri: str | None, log_models: bool = True, experiment: str | None = None,
                   tags: list[str] | None = None) -> dict | None:
    """What a study plan records of ``--track`` (or ``CHEXCUT_TRACKING_URI``), ``--track-models``,
    ``--track-experiment`` and ``--track-tag``: ``{"uri", "log_models"[, "tags", "experiment"]}``, or None."""
    uri = uri or os.environ.get(ENV_URI)
    if not uri:
        if tags or experiment:
            raise ChexcutError("--track-tag and --track-experiment need --track (or $CHEXCUT_TRACKING_URI)")
        return None
    require_mlflow()  # every run logs to one experiment named after the study folder
    track = {"uri": absolute_uri(uri), "log_models": log_models}
    if tags or experiment:
        track.update(tags=parse_tags(tags), experiment=experiment)
    return track


def tracking_from(uri: str | None, experiment: str | None = None, tags: dict | None = None,
                  log_models: bool = True) -> Tracking | None:
    """The tracking settings a command asks for (``uri`` or ``CHEXCUT_TRACKING_URI``; None: no tracking). Checks
    that the extra is installed, so a missing one fails before any work."""
    uri = uri or os.environ.get(ENV_URI) or None
    if not uri:
        return None
    require_mlflow()
    return Tracking(uri=absolute_uri(str(uri)), experiment=experiment or DEFAULT_EXPERIMENT, tags=dict(tags or {}),
                    log_models=log_models)


def absolute_uri(uri: str) -> str:
    """A local store as an absolute URI (a study's scripts run from other folders): ``sqlite:///rel.db`` is
    resolved, and a plain folder becomes ``sqlite:///FOLDER/mlflow.db`` (MLflow 3 no longer writes folder stores;
    the folder keeps the database and, beside it, the artefacts); server URIs are kept."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return uri if rest.startswith("/") or rest.startswith(":memory:") else "sqlite:///" + str(Path(rest).resolve())
    if uri.startswith("file:"):
        uri = uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]
    if "://" not in uri:
        return "sqlite:///" + str(Path(uri).resolve() / "mlflow.db")
    return uri


TIMEOUT_ENV = "CHEXCUT_TRACKING_TIMEOUT"  # seconds a tracking server has to answer (default 5)


def bound_http(uri: str) -> None:
    """A tracking server is checked once with a short deadline (``CHEXCUT_TRACKING_TIMEOUT``, default 5 s): a
    connection that cannot be made raises at once (the caller warns once and goes on untracked), and MLflow's own
    HTTP retries and timeout are bounded for every later call (unless the environment sets them): its defaults
    (several retries, 120 s each) would hold a run or an evaluation for many minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    import socket
    from urllib.parse import urlparse

    try:
        deadline = max(0.5, float(os.environ.get(TIMEOUT_ENV, "5")))
    except ValueError:
        deadline = 5.0
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, deadline))))
    u = urlparse(uri)
    with socket.create_connection((u.hostname or "localhost", u.port or (443 if u.scheme == "https" else 80)),
                                  timeout=deadline):
        pass


def require_mlflow() -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        found = False
    if not found:
        raise ChexcutError(INSTALL_HINT)


def recorded(run_dir) -> dict | None:
    """The run directory's ``mlflow.json`` (None when the run was never tracked)."""
    try:
        value = read_json(Path(run_dir) / RUN_FILE)
    except ChexcutError:
        return None
    return value if isinstance(value, dict) and value.get("run_id") and value.get("uri") else None


def resumed(run_dir, uri: str | None = None) -> Tracking | None:
    """Tracking for a resumed run or a re-evaluation: an explicit ``uri``, else the run's own record. A run tracked
    in one store is never re-linked to another (its ``mlflow.json`` would lose the link to its training)."""
    rec = recorded(run_dir)
    if uri and rec is not None and absolute_uri(str(uri)) != rec["uri"]:
        raise ChexcutError(f"{run_dir} is tracked at {rec['uri']}; --track {uri} would lose that link: leave --track "
                           f"out (the evaluation joins its MLflow run there)")
    if uri or os.environ.get(ENV_URI):
        return tracking_from(uri, rec.get("experiment") if rec else None, (rec or {}).get("tags"),
                             (rec or {}).get("log_models", True))
    if rec is None:
        return None
    require_mlflow()
    return Tracking(uri=rec["uri"], experiment=rec.get("experiment", DEFAULT_EXPERIMENT), tags=rec.get("tags", {}),
                    log_models=rec.get("log_models", True))


class Tracker:
    """One chexcut run as one MLflow run. Every call is guarded: the first failure is a warning and turns
    tracking off for the rest of the process."""

    def __init__(self, tracking: Tracking, run_dir, warn=None):
        self.tracking = tracking
        self.rd = RunDir(run_dir)
        self.client = None
        self.run_id: str | None = None
        self.ended = False
        self.logged_up_to = -1  # a resumed run: the last step whose log row is already in the store
        self._warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))

    # --------------------------------------------------------------------------- guarded calls
    def _guard(self, what: str, fn, *args, **kwargs):
        if self.client is None and what != "connect":
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # the store is down, full, or refuses: the run goes on untracked
            self.client = None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self._warn(f"MLflow tracking at {self.tracking.uri} failed ({what}: {first[:200]}); the run goes on "
                       f"without tracking")
            return None

    def start(self, reopen: bool = True) -> "Tracker":
        """Connect, then continue the run directory's MLflow run (marked running again when ``reopen``: a
        resumed training) or create one in the experiment."""
        self._guard("connect", self._start, reopen)
        return self

    def _start(self, reopen: bool) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up lines are not the run's news
        logging.getLogger("alembic").setLevel(logging.WARNING)
        bound_http(self.tracking.uri)  # an unreachable server: one warning now, not minutes of retries
        self.client = MlflowClient(tracking_uri=self.tracking.uri)
        rec = recorded(self.rd.path)
        if rec and rec["uri"] == self.tracking.uri:
            run = self.client.get_run(rec["run_id"])  # raises if it is gone: a new one is not made silently
            self.run_id = run.info.run_id
            if reopen and run.info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            steps = [m.step for m in self.client.get_metric_history(self.run_id, "train_loss")]
            self.logged_up_to = max(steps, default=-1)  # rows after the checkpoint come again, bit-exact: once
            return
        exp = self.client.get_experiment_by_name(self.tracking.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            self.tracking.experiment, artifact_location=_artifact_location(self.tracking.uri, self.tracking.experiment))
        tags = {"chexcut.run_dir": str(self.rd.path.resolve()), "chexcut.run_id": self.rd.path.name,
                **{str(k): str(v) for k, v in self.tracking.tags.items()}}
        run = self.client.create_run(exp_id, tags=tags, run_name=self.rd.path.name)
        self.run_id = run.info.run_id
        if not reopen:  # an evaluation of a run trained untracked: its parameters too
            self.log_config()
        from chexcut.fileio import write_json

        write_json(self.rd / RUN_FILE, {"uri": self.tracking.uri, "experiment": self.tracking.experiment,
                                         "experiment_id": exp_id, "run_id": self.run_id, "tags": self.tracking.tags,
                                         "log_models": self.tracking.log_models})

    def params(self, values: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:500]) for k, v in values.items() if v is not None]
        for i in range(0, len(items), 100):
            if self.client is not None:
                self._guard("params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step)) for k, v in values.items() if v is not None]
        if items and self.client is not None:
            self._guard("metrics", self.client.log_batch, self.run_id, metrics=items)

    def tags(self, values: dict) -> None:
        from mlflow.entities import RunTag

        if self.client is not None:
            self._guard("tags", self.client.log_batch, self.run_id,
                        tags=[RunTag(str(k), str(v)) for k, v in values.items()])

    def artifact(self, path: Path) -> None:
        if self.client is not None and Path(path).is_file():
            self._guard("artifact", self.client.log_artifact, self.run_id, str(path))

    def end(self, status: str) -> None:
        """``FINISHED``, ``KILLED`` (interrupted; a resume continues it) or ``FAILED``; once."""
        if self.client is not None and not self.ended:
            self.ended = True
            self._guard("end", self.client.set_terminated, self.run_id, status)

    # --------------------------------------------------------------------------- what a run logs
    def emitter(self, emit):
        """``emit`` that also logs finetune's events (start: params; log rows: metrics; end: best, files)."""

        from chexcut import events

        def both(event) -> None:
            emit(event)
            if isinstance(event, events.Start):
                self.log_config()
            elif isinstance(event, events.Log):
                self.log_row(event.row)
            elif isinstance(event, events.End):
                self.log_end(event)

        return both

    def log_config(self) -> None:
        cfg = self.rd.read_config() or {}
        self.params(run_params(cfg))

    def log_row(self, row: dict) -> None:
        step = int(row["step"])
        if step <= self.logged_up_to:
            return
        values = {"train_loss": row.get("train_loss"), "val_mean_auroc": row.get("val_mean_auroc"),
                  **{f"val_auroc/{k[6:]}": v for k, v in row.items() if k.startswith("auroc:")}}
        self.metrics(values, step)

    def log_end(self, event) -> None:
        """The :class:`chexcut.events.End` of the run: best validation, files, and the run's status."""
        best = event.best or {}
        cfg = self.rd.read_config() or {}
        spec = cfg.get("model") or {}
        self.metrics({"best_mean_auroc": best.get("mean_auroc"), "best_step": best.get("step"),
                      "model_params": spec.get("params"), "model_macs": _macs(cfg)}, int(event.step))
        for f in (self.rd.config, self.rd.metrics, self.rd.valid_predictions):
            self.artifact(f)
        if self.tracking.log_models:
            self.artifact(self.rd.best)
        self.end("FINISHED" if event.status == "finished" else "KILLED")

    def log_evaluation(self, result) -> None:
        """``evaluate RUN``: the 5-task and all-label AUROCs with their CI bounds and APs, each label's declared figures
        (:mod:`chexcut.evaluation.figures`, ``tracked``: AUROC), latency, and eval.json. ``result``: an
        :class:`~chexcut.evaluation.result.Evaluation` or its JSON."""
        from chexcut.evaluation import figures
        from chexcut.evaluation.result import Evaluation

        ev = Evaluation.of(result)
        values = {}
        for key, m in ev.means:
            for part in ("auroc", "ci_low", "ci_high", "average_precision"):
                values[f"eval_{key}_{part}"] = m.get(part) if m else None
        for fig in figures.registry():  # the declared per-label figures logged (Figure.tracked): eval_KEY/LABEL
            if fig.tracked and fig.section in ("labels", "calibration"):
                values |= {f"eval_{fig.key}/{r.label}": r.figure(fig)[fig.key] for r in ev.labels
                           if r.rows.get(fig.section)}
        bench = self.rd.read_bench()  # the report's reading of bench.json: batch-1 latency, throughput
        if bench:
            values["bench_latency_ms"], values["bench_throughput_img_s"] = bench["latency_ms"], bench["throughput_img_s"]
        self.metrics(values, step=0)
        self.tags({"chexcut.evaluated_on": ev.evaluation_set.get("description", "")[:250]})
        self.artifact(self.rd.eval)


def _macs(cfg: dict) -> int | None:
    """The model's multiply-accumulates at its training size (the anatomy cache; None when unknown)."""
    from chexcut.models.anatomy_cache import cached_anatomy

    spec = cfg.get("model") or {}
    try:
        anat = cached_anatomy(spec["arch"], int(cfg["train"]["image_size"]), len(spec["labels"]))
        return anat["truncations"][int(spec["drop"])]["macs"]
    except Exception:  # a model file of another kind: MACs unknown, nothing else lost
        return None


def run_params(cfg: dict) -> dict:
    """The parameters of a run, from its config.json: the model's identity, every training setting config.json
    records (all of TrainConfig's fields, by their names) and every data option (``dir`` and ``fingerprint`` as
    ``data_dir``/``data_fingerprint``; lists comma-joined), and the library versions."""
    spec, train, data = cfg.get("model") or {}, cfg.get("train") or {}, cfg.get("data") or {}
    weights = spec.get("weights")
    out = {"arch": spec.get("arch"), "drop": spec.get("drop"),
           "weights": weights.get("kind") if isinstance(weights, dict) else weights, "in_chans": spec.get("in_chans"),
           "params": spec.get("params")}
    out.update(train)
    renamed = {"dir": "data_dir", "fingerprint": "data_fingerprint"}
    for name, value in data.items():
        if name != "notes":
            out[renamed.get(name, name)] = ",".join(map(str, value)) if isinstance(value, list) else value
    for name, version in (cfg.get("versions") or {}).items():
        out[f"version_{name}"] = version
    return out


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store (``PATH/mlartifacts/EXPERIMENT``) instead of the working directory."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent.resolve() / "mlartifacts" / experiment).as_uri()
    return None


def log_evaluation(run_dir, result: dict, uri: str | None = None) -> None:
    """``evaluate RUN``: update the run's MLflow run (its ``mlflow.json``, or ``uri``) with the evaluation."""
    t = resumed(run_dir, uri)
    if t is not None:
        tracker = Tracker(t, run_dir).start(reopen=False)
        tracker.log_evaluation(result)
        if tracker.run_id and tracker.client is not None:
            tracker.end("FINISHED")
