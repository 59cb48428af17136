"""The model card of a Hugging Face model folder (``chexcut export --format hub``): README.md with the YAML front
matter the Hub indexes.

The metadata is built with huggingface_hub's own :class:`~huggingface_hub.ModelCardData` and
:class:`~huggingface_hub.EvalResult` (so it is what the Hub parses): ``license`` from the upstream weights
(a licence the Hub does not list is ``other`` with its name), ``base_model`` (the Hub repository of the starting
weights, when there is one), ``tags``, ``datasets`` (the training set), ``pipeline_tag: image-classification``,
``library_name`` (``timm`` when plain timm loads the folder, else ``chexcut``) and ``model-index``: per label the
AUROC with its bootstrap interval (in the metric's ``args``) on each named evaluation set of the run (its
``eval.json`` and ``external/*.json``). No local path is written into the card.
"""

from __future__ import annotations

import re
from pathlib import Path

from chexcut.models.spec import ModelSpec
from chexcut.rundir import RunDir

#: Licence ids the Hub lists (https://huggingface.co/docs/hub/repositories-licenses) that upstream weights carry.
HUB_LICENCES = ("apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "bsd", "cc-by-4.0", "cc-by-sa-4.0",
                "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc0-1.0", "gpl-3.0", "lgpl-3.0", "openrail",
                "llama2", "llama3", "other", "unknown")
TASK = {"type": "image-classification", "name": "Multi-label chest X-ray classification"}
SET_NAMES = {"run-validation": "validation split of the training data", "same-dataset": "another split of the "
             "training data", "external": "an external data set", "unchecked": "a data set chosen for the model"}


def hub_licence(weights: dict) -> dict:
    """``{"license": ...}`` (and ``license_name`` for ``other``) from the starting weights' licence string, e.g.
    ``bsd-3-clause (torchvision; ...)`` -> ``bsd-3-clause``; ``msrla (...)`` -> ``other`` named ``msrla``;
    no licence (weights none, a file) -> ``unknown``."""
    text = str(weights.get("license") or "").strip().lower()
    first = re.split(r"[\s(;,]+", text, maxsplit=1)[0] if text else ""
    if not first:
        return {"license": "unknown"}
    if first in HUB_LICENCES:
        return {"license": first}
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9.-]+", "-", first).strip("-") or "other"}


def base_model(weights: dict) -> str | None:
    """The Hub repository of the starting weights: timm's (``hf_hub_id`` in their URL), a pretraining source's
    (RAD-DINO), or the timm copy of torchvision's ImageNet weights (``timm/resnet18.tv_in1k`` holds torchvision's
    ``IMAGENET1K_V1`` tensors); None for random or local weights."""
    url = str(weights.get("url") or "")
    if weights.get("kind") == "source" and not url:
        from chexcut.models.sources import SOURCES

        source = SOURCES.get(str(weights.get("name")))
        url = (source.url or "") if source else ""
    m = re.match(r"https://huggingface\.co/([\w.-]+/[\w.-]+)", url)
    if m:
        return m.group(1)
    wid = str(weights.get("id") or "")
    if wid.startswith("torchvision:") and wid.endswith(".IMAGENET1K_V1"):
        import timm

        arch = wid.removeprefix("torchvision:").removesuffix(".IMAGENET1K_V1")
        try:
            return timm.models.get_pretrained_cfg(f"{arch}.tv_in1k").hf_hub_id or None
        except Exception:  # no timm copy of these weights
            return None
    return None


def evaluations(run_dir: Path | None) -> list[tuple[str, dict]]:
    """(name, evaluation JSON) of each named evaluation set of a run: its ``eval.json`` (named by its set's kind,
    e.g. the validation split) and each ``external/NAME.json``; none for a bare model file."""
    if run_dir is None:
        return []
    rd = RunDir(run_dir)
    out = []
    main = rd.read_eval()
    if isinstance(main, dict) and main.get("labels"):
        kind = (main.get("evaluation_set") or {}).get("kind", "run-validation")
        out.append((SET_NAMES.get(kind, kind), main))
    for name in rd.external_names():
        ev = rd.read_eval(name)
        if isinstance(ev, dict) and ev.get("labels"):
            out.append((name, ev))
    return out


def eval_results(evals: list[tuple[str, dict]]) -> list:
    """huggingface_hub ``EvalResult``s: per evaluation set, the mean competition AUROC and each label's AUROC, its
    bootstrap interval in the metric's ``args``."""
    from huggingface_hub import EvalResult

    results = []
    for name, ev in evals:
        es = ev.get("evaluation_set") or {}
        dataset = {"dataset_type": str(es.get("dataset") or "chexpert"), "dataset_name": name,
                   "dataset_split": str(es.get("split") or "valid")}
        level = ev.get("ci", 0.95)
        rows = [("mean competition", ev.get("mean_competition") or {}), *((r["label"], r) for r in ev["labels"])]
        for label, row in rows:
            if row.get("auroc") is None:
                continue
            args = {"ci_low": row.get("ci_low"), "ci_high": row.get("ci_high"), "ci_level": level,
                    "bootstrap": ev.get("bootstrap"), "cluster": ev.get("cluster"), "level": ev.get("level"),
                    "n_pos": row.get("n_pos"), "n_neg": row.get("n_neg"), "label": label}
            results.append(EvalResult(task_type=TASK["type"], task_name=TASK["name"], metric_type="roc_auc",
                                      metric_value=float(row["auroc"]), metric_name=f"AUROC {label}",
                                      metric_args={k: v for k, v in args.items() if v is not None}, **dataset))
    return results


def card_data(spec: ModelSpec, name: str, run_config: dict | None, evals: list, timm_loads: bool):
    """The card's :class:`~huggingface_hub.ModelCardData`."""
    from huggingface_hub import ModelCardData

    from chexcut.models.registry import get_arch

    family = get_arch(spec.arch).family.name
    tags = ["image-classification", "multi-label", "chest-x-ray", "radiology", "medical-imaging", "chexcut",
            family, spec.arch] + (["timm"] if timm_loads else [])
    data = (run_config or {}).get("data") or {}
    results = eval_results(evals)
    return ModelCardData(library_name="timm" if timm_loads else "chexcut", pipeline_tag="image-classification",
                         tags=tags, base_model=base_model(spec.weights),
                         datasets=[str(data.get("dataset") or "chexpert")] if data else None,
                         model_name=name if results else None, eval_results=results or None,
                         **hub_licence(spec.weights))


def results_table(evals: list[tuple[str, dict]]) -> str:
    lines = []
    for name, ev in evals:
        es = ev.get("evaluation_set") or {}
        lines += ["", f"### {name} ({es.get('dataset') or 'chexpert'}, split {es.get('split') or 'valid'}, "
                      f"n = {ev.get('n')})", "", f"| label | AUROC | {round(100 * ev.get('ci', 0.95))}% CI |",
                  "|---|---|---|"]
        rows = [("**mean competition**", ev.get("mean_competition") or {}), *((r["label"], r) for r in ev["labels"])]
        for label, row in rows:
            ci = "-" if row.get("ci_low") is None else f"{row['ci_low']:.3f} to {row['ci_high']:.3f}"
            lines.append(f"| {label} | {'-' if row.get('auroc') is None else format(row['auroc'], '.3f')} | {ci} |")
    return "\n".join(lines) if lines else "\nNo evaluation was recorded with this model (a run's `eval.json`)."


def usage(spec: ModelSpec, name: str, timm_loads: bool, why: str) -> str:
    p = spec.preprocess
    chexcut = (f"```bash\npip install chexcut\nchexcut evaluate hf-hub:{name} --data YOUR_DATA   # or the folder "
               f"itself\n```")
    if not timm_loads:
        return (f"**This folder needs chexcut**: {why}. `timm.create_model` cannot build it; chexcut reads "
                f"`model.safetensors` (its model spec is in the file's metadata) and every chexcut command that "
                f"takes a MODEL takes this folder or `hf-hub:{name}`:\n\n{chexcut}")
    return (f"Plain timm builds this model from `config.json` and loads `model.safetensors`:\n\n```python\n"
            f"import timm, torch\nmodel = timm.create_model(\"hf-hub:{name}\", pretrained=True).eval()\n"
            f"# or a local copy: timm.create_model(\"local-dir:PATH\", pretrained=True)\n"
            f"probabilities = torch.sigmoid(model(x))  # multi-label: a sigmoid per label, not a softmax\n```\n\n"
            f"`x` is a batch ({p.in_chans}, {p.image_size}, {p.image_size}): a grey X-ray resized to "
            f"{p.image_size} x {p.image_size} ({p.resize}, bilinear), scaled to [0, 1]"
            f"{', replicated to 3 channels' if p.in_chans == 3 else ''} and normalised with `pretrained_cfg`'s mean "
            f"and std. chexcut does all of it:\n\n{chexcut}")


def readme(spec: ModelSpec, name: str, run_config: dict | None, evals: list, loads: tuple[bool, str]) -> str:
    """The README.md text: front matter, then what the model is, how to load it, and its results."""
    from huggingface_hub import ModelCard

    timm_loads, why = loads
    data = card_data(spec, name, run_config, evals, timm_loads)
    p = spec.preprocess
    body = "\n".join([
        f"# {name}", "",
        f"A chest X-ray classifier written by [chexcut](https://pypi.org/project/chexcut/) {spec.chexcut_version}: "
        f"{spec.arch} with its last {spec.drop} of {spec.num_blocks} blocks removed (keep {spec.keep}), "
        f"{spec.params:,} parameters, {len(spec.labels)} labels (one sigmoid each), starting from "
        f"{spec.weights_name} weights.", "",
        "## Use", "", usage(spec, name, timm_loads, why), "",
        "## Input", "",
        f"Grey images at {p.image_size} x {p.image_size} ({p.resize}), {p.in_chans} channel(s), mean "
        f"{list(p.mean)}, std {list(p.std)} on [0, 1] pixels. Labels: {', '.join(spec.labels)}.", "",
        "## Results", results_table(evals), "",
        "## Licence", "",
        f"The starting weights are licensed {spec.weights.get('license') or 'as their origin says (none recorded)'}; "
        f"the training data's own terms (e.g. CheXpert's research use agreement) may apply too. Not a medical "
        f"device: for research.", ""])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
