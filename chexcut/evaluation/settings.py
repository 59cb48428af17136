"""What an evaluation is asked for, checked once: the statistics (:class:`Statistics`) and how a model is
run over images (:class:`Inference`). Plain values; no torch, no numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from chexcut.choices import BOUNDS, Cluster, Level, Method, check
from chexcut.errors import ChexcutError


def check_parameters(bootstrap: int = 1000, ci: float = 0.95, alpha: float = 0.05, cluster: str = "patient",
                     method: str = "bootstrap", level: str = "study", margin: float | None = None,
                     equivalence: bool = False) -> None:
    """One-line errors for evaluation parameters, checked before any inference runs."""
    from chexcut.choices import check_bounds

    check_bounds("bootstrap", bootstrap)  # the declared bound: 0 .. MAX_BOOTSTRAP
    if not 0 < ci < 1:
        raise ChexcutError(f"--ci must be in (0, 1), not {ci}")
    if not 0 < alpha < 1:
        raise ChexcutError(f"--alpha must be in (0, 1), not {alpha}")
    check(Cluster, cluster, "--cluster")
    check(Method, method, "--method")
    check(Level, level, "--level")
    if margin is not None and not 0 < margin < 1:
        raise ChexcutError(f"--margin is in AUROC units and must be in (0, 1), e.g. 0.02; not {margin}")
    if equivalence and margin is None:
        raise ChexcutError("--equivalence needs --margin M (the equivalence bounds are -M and +M)")


#: The most bootstrap replicates (the replicate matrix is replicates x labels x models float64s): BOUNDS's.
MAX_BOOTSTRAP = int(BOUNDS["bootstrap"][1])


@dataclass(frozen=True)
class Statistics:
    """Bootstrap CIs and the paired test: replicates, level, seed, clustering, test method, verdict."""

    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0
    cluster: str = "patient"  # resample (and cluster DeLong) by patient | study | none
    method: str = "bootstrap"  # paired test: bootstrap | delong
    alpha: float = 0.05
    margin: float | None = None  # non-inferiority margin (AUROC units)
    equivalence: bool = False  # with margin: TOST equivalence too
    level: str = "study"  # study (max over views) | image
    by: tuple[str, ...] = ()  # subgroup columns (of the truth CSV or a --groups CSV)
    age_bins: tuple[float, ...] | None = None  # edges turning Age into intervals [a, b)
    calibration: bool = True  # Brier, ECE, recalibration slope/intercept (probabilities; logits after a sigmoid)
    at_specificity: tuple[float, ...] = ()  # operating points chosen on the evaluated set (optimistic)
    at_sensitivity: tuple[float, ...] = ()
    decision_curve: bool = False  # net benefit vs treat-all / treat-none over threshold probabilities
    prevalence_matched: bool = False  # with by: groups' AP compared after matching their prevalence
    failures: int = 0  # per label, the N most confident false positives and negatives at the operating threshold

    def __post_init__(self):
        check_parameters(bootstrap=self.bootstrap, ci=self.ci, alpha=self.alpha, cluster=str(self.cluster),
                         method=str(self.method), level=str(self.level), margin=self.margin,
                         equivalence=self.equivalence)
        for name in ("cluster", "method", "level"):
            object.__setattr__(self, name, str(getattr(self, name)))
        from chexcut.choices import check_bounds

        check_bounds("seed", self.seed)
        object.__setattr__(self, "by", tuple(self.by))
        from chexcut.evaluation.operating import check_target

        for name in ("at_specificity", "at_sensitivity"):
            flag = "--" + name.replace("_", "-")
            object.__setattr__(self, name, tuple(dict.fromkeys(check_target(v, flag) for v in getattr(self, name))))
        if self.prevalence_matched and not self.by:
            raise ChexcutError("--prevalence-matched compares subgroups: add --by COLUMN")
        check_bounds("failures", self.failures)
        if len(set(self.by)) != len(self.by):
            raise ChexcutError(f"--by names a column twice: {','.join(self.by)}")
        if self.age_bins is not None:
            edges = tuple(float(e) for e in self.age_bins)
            if not all(math.isfinite(e) for e in edges):
                raise ChexcutError(f"--age-bins takes finite numbers, not {','.join(map(str, self.age_bins))}")
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ChexcutError(f"--age-bins needs at least two increasing edges (e.g. 0,40,60,80,200), not "
                                   f"{','.join(map(str, self.age_bins))}")
            object.__setattr__(self, "age_bins", edges)

    def to_json(self) -> dict:
        """Every setting, as JSON (tuples as lists): what eval.json and a study's plan record."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict) -> "Statistics":
        """The settings :meth:`to_json` wrote (a setting not named takes its default; an unknown one is one line)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ChexcutError(f"unknown evaluation settings: {', '.join(unknown)}")
        nullable = {f.name for f in fields(cls) if f.default is None}  # None is a value there, else "not given"
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if v is not None or k in nullable})


def check_failure_images(folder: Path | None, stats: Statistics, model) -> None:
    """``--failure-images``: a folder that may be written, with ``--failures N`` and a MODEL to draw maps from."""
    if folder is None:
        return
    if not stats.failures or model is None:
        raise ChexcutError("--failure-images needs --failures N and a MODEL (a run or model file)")
    from chexcut.fileio import check_output_folder

    check_output_folder(folder, "--failure-images folder")


@dataclass(frozen=True)
class Inference:
    """How a model runs over a data set: input size (None: the model's own), batch, device, workers, precision,
    image cache."""

    image_size: int | None = None
    batch_size: int = 64
    device: str | None = None
    workers: int | None = None  # None: the default for the CPUs this process may use
    precision: str | None = None
    cache_dir: Path | None = None

    def __post_init__(self):
        from chexcut.choices import check_bounds

        for name in ("batch_size", "workers", "image_size"):
            check_bounds(name, getattr(self, name))
