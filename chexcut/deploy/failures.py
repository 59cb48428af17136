"""Failure analysis, shown: per label, a contact sheet of the evaluation's most confident false positives (top row)
and false negatives (bottom row), each image with its Grad-CAM map for that label (``explain``'s arithmetic) and
a caption (kind, score). Reads the ``failures`` block of an evaluation JSON and the rows it was computed on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chexcut.errors import ChexcutError


def _files_by_key(source: dict, level: str) -> dict[str, str]:
    """Each evaluated key (an image path, or a study at the study level) -> an image file (a study's first view)."""
    from chexcut.data.tables import DataOptions, load_split

    opts = DataOptions.from_json(source["options"])
    table = load_split(source["data"], source["split"], dataclasses.replace(opts, labels=None))
    out: dict[str, str] = {}
    for path, study, f in zip(table.paths, table.study, table.files):
        out.setdefault(path, f)
        if level == "study":
            out.setdefault(str(study), f)
    return out


def failure_sheets(result: dict, model: str, folder: Path) -> list[Path]:
    """One PNG per label with failures listed (``evaluate --failures N --failure-images DIR``); returns them."""
    from PIL import Image

    from chexcut.deploy.explain import contact_sheet, gradcam, overlay, read_images, target_layer
    from chexcut.evaluation.plots import unique_slugs
    from chexcut.fileio import atomic_path
    from chexcut.models.modelfile import load_model
    from chexcut.models.source import ModelSource

    if not result.get("failures"):
        raise ChexcutError("--failure-images needs --failures N")
    if not (result.get("source") or {}).get("model"):
        raise ChexcutError("--failure-images needs a MODEL (a run or model file), not --predictions")
    net = load_model(ModelSource.parse(result["source"]["model"]).require_file("evaluate --failure-images"))
    spec = net.chexcut_spec
    target_layer(net, spec, None)
    files = _files_by_key(result["source"], result.get("level", "study"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stems = unique_slugs([f["label"] for f in result["failures"]])
    written = []
    for block in result["failures"]:
        rows = []
        for kind in ("false_positives", "false_negatives"):
            cases = [c for c in block.get(kind, []) if c["key"] in files]
            if not cases:
                continue
            imgs = read_images([files[c["key"]] for c in cases], [c["key"] for c in cases],
                               spec.preprocess.image_size, spec.preprocess.resize, skip_bad=True)
            if not imgs.paths:
                continue
            maps = gradcam(net, spec, imgs.images, [list(spec.labels).index(block["label"])])
            tag = "FP" if kind == "false_positives" else "FN"
            score = {c["key"]: c["score"] for c in cases}
            rows.append(contact_sheet([overlay(imgs.images[k, 0].numpy(), maps[k, 0], f"{tag} {score[p]:.2f}")
                                       for k, p in enumerate(imgs.paths)]))
        if not rows:
            continue
        sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "black")
        y = 0
        for r in rows:
            sheet.paste(r, (0, y))
            y += r.height
        path = folder / f"{stems[block['label']]}-failures.png"
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
        written.append(path)
    return written
