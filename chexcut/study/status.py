"""``chexcut study status STUDY``: where every planned run stands, read from the run directories alone (so it is
the same for ``sbatch``, ``run.sh`` and ``study run``): queued, running (with a heartbeat), stalled,
interrupted, failed (with the reason or the last log line) or done (with the 5-task AUROC and its CI).

A running run's heartbeat is the newest of its metrics.csv (a row every ``--log-every`` steps) and
state.json (every checkpoint). It is *stalled* when that heartbeat is older than ``max(STALL_MIN_S,
STALL_FACTOR x`` its usual time between rows``)``: a node that died, a hung filesystem, a job killed with -9.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

from chexcut.rundir import RunDir
from chexcut.study.plan import load_plan

STATUSES = ("queued", "running", "stalled", "interrupted", "failed", "done")
STALL_MIN_S = 600.0
STALL_FACTOR = 10.0


def study_status(study_dir: Path, now: float | None = None) -> dict:
    """``{"study", "runs": [{"id", "status", "step", "total_steps", "epoch", "best_mean_auroc", "auroc",
    "ci_low", "ci_high", "images_per_s", "updated", "age_s", "reason"}], "totals": {status: n}}``."""
    study_dir = Path(study_dir)
    plan = load_plan(study_dir)
    now = time.time() if now is None else now
    runs = [run_status(r["id"], RunDir(study_dir / r["run_dir"]), now) for r in plan["runs"]]
    counts = Counter(r["status"] for r in runs)
    return {"study": str(study_dir.resolve()), "runs": runs, "totals": {s: counts.get(s, 0) for s in STATUSES}}


def run_status(run_id: str, rd: RunDir, now: float) -> dict:
    row = {"id": run_id, "status": "queued", "step": None, "total_steps": None, "epoch": None,
           "best_mean_auroc": None, "auroc": None, "ci_low": None, "ci_high": None, "images_per_s": None,
           "updated": None, "age_s": None, "reason": None}
    if not rd.path.is_dir() or not any(rd.path.iterdir()):
        return row
    state = rd.read_state()
    state = state if isinstance(state, dict) else {}
    rows = _metrics_rows(rd.metrics)
    beat = max((p.stat().st_mtime for p in (rd.metrics, rd.state, rd.config, rd.log) if p.is_file()), default=None)
    best = state.get("best") if isinstance(state.get("best"), dict) else {}
    epoch = _number(state.get("epoch"))
    row.update(step=_count(state.get("step")), total_steps=_count(state.get("total_steps")),
               epoch=round(epoch, 3) if epoch is not None else None, best_mean_auroc=_number(best.get("mean_auroc")),
               images_per_s=_last_number(rows, "images_per_s"),
               updated=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(beat)) if beat else None,
               age_s=round(now - beat, 1) if beat else None)
    ev = rd.read_eval()
    if isinstance(ev, dict) and isinstance(ev.get("mean_competition"), dict):
        m = ev["mean_competition"]
        row.update(status="done", auroc=_number(m.get("auroc")), ci_low=_number(m.get("ci_low")),
                   ci_high=_number(m.get("ci_high")))
        return row
    status = state.get("status")
    last = _last_line(rd.log) or ""  # read once: the interrupt and failure checks and the reason use it
    if status == "interrupted" or last.startswith(("chexcut: interrupted", "chexcut: terminated")):
        row.update(status="interrupted", reason=f"stopped at step {state.get('step')} by a signal; it resumes "
                                                f"from its checkpoint")
    elif status == "stopped":
        row.update(status="failed", reason=state.get("reason") or last or None)
    elif status in ("finished", "paused") and _failed_after(last):
        row.update(status="failed", reason=last)
    else:  # running, starting (config only), or trained and being evaluated
        row["status"] = "running"
        latest = _last_number(rows, "step")  # metrics rows run ahead of the last checkpoint
        if latest is not None and (row["step"] is None or latest > row["step"]):
            row["step"] = int(latest)
        if status in ("finished", "paused"):
            row["reason"] = "trained; evaluating"
        if beat is not None and now - beat > _stall_after(rd, rows):
            row.update(status="stalled", reason=f"no sign of life for {_age(now - beat)} (its process may be gone: "
                                                f"rerun the study's line to resume it)")
    return row


def _number(x) -> float | None:
    """A finite number from a run file, else None (a string, NaN or infinity written by hand or a crash)."""
    import math

    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _count(x) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def _metrics_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _last_number(rows: list[dict], column: str) -> float | None:
    for r in reversed(rows):
        try:
            value = float(r[column])
        except (KeyError, TypeError, ValueError):
            continue
        if _number(value) is not None:
            return value
    return None


def _stall_after(rd: RunDir, rows: list[dict]) -> float:
    """STALL_FACTOR x the usual time between metrics rows (from config.json's time to the last row), at least
    STALL_MIN_S."""
    try:
        span = rd.metrics.stat().st_mtime - rd.config.stat().st_mtime
    except OSError:
        return STALL_MIN_S
    per_row = span / max(len(rows), 1)
    return max(STALL_MIN_S, STALL_FACTOR * per_row)


def _failed_after(last: str) -> bool:
    """Trained, and the run's log (its ``last`` line) ends in an error (evaluate or bench failed)."""
    return "error" in last.lower() or last.startswith("chexcut:")


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
