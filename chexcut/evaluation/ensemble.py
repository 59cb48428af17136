"""Ensembles: members' predictions on the same rows, averaged, evaluated like any model and compared (paired, on the
same resamples) with the ensemble's best member.

``average="probabilities"`` takes the (weighted) mean of the members' probabilities; ``"logits"`` the mean of
their log-odds, returned as a probability (or as a logit when the members were given as logits). Members must
share the evaluated labels and rows (one line naming the first that does not). The best member is the one with
the highest 5-task mean AUROC on these rows (the highest mean over every evaluable label when none of the five
is evaluable): choosing it on the evaluated rows favours the member, so the paired test is conservative for the
ensemble. No torch here (members that are models are run by :mod:`chexcut.evaluation.orchestrate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError

AVERAGES = ("probabilities", "logits")
_CLIP = 1e-7


def check_average(average: str) -> str:
    if average not in AVERAGES:
        raise ChexcutError(f"--average {average!r}: one of {', '.join(AVERAGES)}")
    return average


def check_weights(weights, k: int) -> tuple[float, ...] | None:
    """``weights`` (one per member, MODEL first) as positive finite numbers, or None (equal)."""
    if weights is None:
        return None
    w = tuple(float(x) for x in weights)
    if len(w) != k:
        raise ChexcutError(f"--ensemble-weights gives {len(w)} weights for {k} members (MODEL and each --ensemble)")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise ChexcutError(f"--ensemble-weights must be positive numbers, not {','.join(map(str, w))}")
    return w


def check_members(names: list[str]) -> None:
    """Each member once, judged by the file or folder it resolves to (``RUN`` and ``RUN/``, a symlink to a run, a
    ``..`` spelling): one run named twice would count its predictions twice."""
    import os

    seen: dict[str, str] = {}
    for name in names:
        where = os.path.realpath(name)
        if where in seen:
            raise ChexcutError(f"an ensemble member is named twice: {seen[where]} and {name} are one "
                               f"{'run' if os.path.isdir(where) else 'file'} ({where})")
        seen[where] = name


def check_ensemble_folder(out: Path, members: list[str], truth: Path | None) -> None:
    """``ensemble -o``: never a run's folder (its eval.json and predictions.csv would be replaced), and neither
    output file one of the members or the truth (a member's CSV, reached by any spelling or link)."""
    from chexcut.fileio import check_output_file
    from chexcut.rundir import RunDir

    if RunDir(out).is_run():
        raise ChexcutError(f"--out {out} is a finetune run's folder; the ensemble writes eval.json and predictions.csv "
                           f"into a folder of its own")
    if Path(out).is_dir():
        for name in ("predictions.csv", "eval.json"):
            check_output_file(Path(out) / name, "the ensemble's", inputs=[*members, truth],
                              protected=[m for m in members if Path(m).is_dir()])


def combine(mats: list[np.ndarray], weights=None, average: str = "probabilities", inputs_are_logits: bool = False):
    """The weighted mean of ``mats`` (each (N, L)) on the probability or the logit scale."""
    check_average(average)
    w = np.asarray(weights if weights is not None else [1.0] * len(mats), dtype=np.float64)
    w = w / w.max()  # scaled first: weights near the float maximum would sum to inf (and every prediction to 0)
    w = w / w.sum()
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in mats])
    if inputs_are_logits:
        if average == "logits":
            return np.tensordot(w, stack, axes=1)
        stack = 1 / (1 + np.exp(-stack))
        p = np.tensordot(w, stack, axes=1)
        return np.log(np.clip(p, _CLIP, 1 - _CLIP) / (1 - np.clip(p, _CLIP, 1 - _CLIP)))
    if average == "probabilities":
        return np.tensordot(w, stack, axes=1)
    p = np.clip(stack, _CLIP, 1 - _CLIP)
    return 1 / (1 + np.exp(-np.tensordot(w, np.log(p / (1 - p)), axes=1)))


def member_scores(i, es, evalrows, table, infer, progress, first: np.ndarray, other_scores):
    """``([(name, (N, L) scores)...], [overlap record or None per member])``: MODEL's (``first``) and each
    ``--ensemble`` member's on the evaluated rows (``other_scores`` runs or reads one, as ``--compare`` does)."""
    check_average(i.average)
    if i.compare:
        raise ChexcutError("--ensemble compares the ensemble with its best member; give no --compare")
    names = [str(i.model or i.predictions), *map(str, i.ensemble)]
    check_members(names)
    check_weights(i.ensemble_weights, len(names))
    out, overlaps = [(names[0], first)], [None]
    for name in names[1:]:
        scores, overlap = other_scores(name, "--ensemble", i, es, evalrows, table, infer, progress)
        out.append((name, scores))
        overlaps.append(overlap)
    return out, overlaps


def best_member(evalrows, names: list[str], mats: list[np.ndarray]) -> dict:
    """The member with the highest 5-task mean AUROC on ``evalrows`` (all evaluable labels when no task is)."""
    from chexcut.evaluation.summary import competition_columns, label_aurocs

    mask = evalrows.mask > 0
    aurocs = {}
    for name, m in zip(names, mats):
        auc = label_aurocs(evalrows.y, mask, m)
        cols = competition_columns(evalrows.labels, auc) or [j for j in range(len(auc)) if np.isfinite(auc[j])]
        aurocs[name] = float(np.mean(auc[cols])) if cols else None
    ranked = [n for n in names if aurocs[n] is not None]
    if not ranked:
        raise ChexcutError("no ensemble member has an evaluable label on these rows")
    best = max(ranked, key=lambda n: aurocs[n])
    return {"name": best, "index": names.index(best), "aurocs": aurocs}
