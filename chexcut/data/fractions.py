"""Label budgets: train on a fraction of the labelled patients (``finetune --label-fraction F``).

Patients are drawn, not images (every image of a drawn patient comes along), in one order per seed: a seeded
permutation of the training patients, of which the first ``ceil(F x patients)`` are taken. The draw is
stratified so that each label keeps a positive where the training rows have one: the first positive patient of
every label (in the same order) joins when the prefix holds none. So for one seed the draws are nested (the 1%
patients are inside the 10% ones: a longer prefix holds a shorter one, and the first positive patient of a
label is the same for both), and only training rows are ever drawn, so the evaluation rows stay patient-disjoint
as the split made them.
"""

from __future__ import annotations

import math

import numpy as np

from chexcut.errors import ChexcutError


def check_fraction(fraction: float, flag: str = "--label-fraction") -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ChexcutError(f"{flag} is a share of the training patients in (0, 1], e.g. 0.1; not {fraction!r}")
    return float(fraction)


def patient_order(patients: np.ndarray, seed: int) -> list[str]:
    """The training patients in the seed's order (the same for every fraction)."""
    unique = sorted(set(map(str, patients)))
    order = np.random.default_rng([seed, 0x1AB31]).permutation(len(unique))
    return [unique[i] for i in order]


def draw_patients(table, fraction: float, seed: int) -> tuple[np.ndarray, dict]:
    """(the rows of ``table`` kept, what was drawn): the first ``ceil(fraction x patients)`` patients of the seed's
    order, and for each label with a positive row but none among them, its first positive patient."""
    fraction = check_fraction(fraction)
    order = patient_order(table.patient, seed)
    taken = set(order[:max(1, math.ceil(fraction * len(order)))])
    positive = table.targets > 0.5
    counted = table.mask > 0
    added = []
    for j, label in enumerate(table.labels):
        rows = positive[:, j] & counted[:, j]
        if not rows.any() or any(p in taken for p in table.patient[rows]):
            continue
        with_positive = set(map(str, table.patient[rows]))
        first = next(p for p in order if p in with_positive)
        taken.add(first)
        added.append({"label": label, "patient": first})
    keep = np.flatnonzero([str(p) in taken for p in table.patient])
    kept_pos = (positive & counted)[keep]
    record = {
        "fraction": fraction, "seed": seed, "patients": len(taken), "of_patients": len(order),
        "images": int(len(keep)), "of_images": int(len(table.patient)),
        "positives": {label: int(kept_pos[:, j].sum()) for j, label in enumerate(table.labels)},
        "added_for_positives": added,
        "without_positives": [label for j, label in enumerate(table.labels) if not kept_pos[:, j].any()],
        "patient_ids": sorted(taken),
    }
    return keep, record
