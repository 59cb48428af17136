"""What a fine-tuning run tells its watchers, typed: the progress bar, MLflow tracking and ``--log-format json``
all read these same events (``emit(event)``, rank 0 only). :func:`to_json` is the JSON line's object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Start:
    """Training starts (or resumes) at ``step`` of ``last_step``."""

    step: int
    last_step: int
    steps_per_epoch: int
    train_images: int
    valid_images: int
    device: str
    precision: str
    cached: bool
    notes: tuple[str, ...] = ()  # what the run does differently than asked, or should know (a licence)
    kind = "start"


@dataclass(frozen=True)
class Log:
    """One metrics row (as metrics.csv holds it: step, epoch, images_seen, train_loss, lr, images_per_s, ...,
    and at a validation val_mean_auroc and the per-label AUROCs)."""

    row: dict
    kind = "log"

    @property
    def step(self) -> int:
        return int(self.row["step"])


@dataclass(frozen=True)
class End:
    """The run stopped: ``status`` finished | paused | interrupted | stopped, with its best validation."""

    status: str
    step: int
    best: dict
    kind = "end"


Event = Start | Log | End


def to_json(event: Event) -> dict:
    """``{"event": kind, ...fields}``: the object ``--log-format json`` prints, one per line."""
    fields = event.row if isinstance(event, Log) else dataclasses.asdict(event)
    return {"event": event.kind, **fields}
