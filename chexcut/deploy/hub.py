"""A chexcut model as a Hugging Face model repository: ``chexcut export MODEL --format hub -o DIR [--push ORG/NAME]``.

The folder is in the Hub's (and timm's ``push_to_hf_hub``) layout:

    model.safetensors   the weights; its metadata holds the chexcut spec, so it is also a chexcut model file
    config.json         what timm reads: architecture, num_classes, label_names, model_args, pretrained_cfg
                        (mean, std, input_size, interpolation, crop): written by timm's own ``save_for_hf``
    README.md           the model card (:mod:`chexcut.deploy.hubcard`)
    model.onnx          with ``--onnx``: the ONNX graph of ``chexcut export -o x.onnx``

Where timm can build the model (:func:`timm_twin`: an untruncated model whose tensors are timm's, a truncated ViT as
timm's ``depth``), a timm model is built from the config, loaded strictly with the tensors and checked against
chexcut's own forward before anything is written; ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` then
gives the same model. Where it cannot (timm's ResNet, ConvNeXt and Swin always build every stage), the config and
the card say the folder needs chexcut, whose every MODEL argument takes the folder or ``hf-hub:ORG/NAME``
(:mod:`chexcut.models.source`). The folder is written beside its final name and renamed into place.

``--push`` uploads the folder with huggingface_hub (``HfApi.create_repo`` + ``upload_folder``); the token is
huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``), never passed, written or printed by chexcut.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.models.source import HUB_WEIGHTS
from chexcut.models.spec import ModelSpec

PARITY = 1e-5  # timm's probabilities vs chexcut's on the same input, or the folder is not called timm-loadable
HUB_URL = "https://huggingface.co"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def timm_candidate(spec: ModelSpec) -> tuple[str | None, dict, str]:
    """(timm architecture, its ``model_args``, "") for a model timm could build, else (None, {}, why not)."""
    import timm

    from chexcut.models.registry import get_arch

    fam = get_arch(spec.arch).family
    if not timm.is_model(spec.arch):
        return None, {}, f"timm has no {spec.arch}"
    args = {}
    if spec.drop:
        if fam.name != "vit":
            return None, {}, (f"timm's {spec.arch} always builds all {fam.num_blocks} {fam.unit}s; this model keeps "
                              f"{spec.keep}")
        args["depth"] = spec.keep
    if fam.sized:
        args["img_size"] = spec.preprocess.image_size
    if spec.preprocess.in_chans != 3:
        args["in_chans"] = spec.preprocess.in_chans
    if fam.pruning == "timm":
        args["global_pool"] = spec.pool
    if fam.name == "vit" and spec.pool == "avg":
        args["fc_norm"] = False  # chexcut keeps the ViT's final norm before the mean of the patch tokens
    return spec.arch, args, ""


def timm_twin(model, spec: ModelSpec):
    """(timm's model holding this model's tensors, its ``model_args``, "") when timm builds the same model (strict
    load, probabilities within :data:`PARITY` on a generated batch), else (None, {}, why not)."""
    import timm
    import torch

    name, args, why = timm_candidate(spec)
    if name is None:
        return None, {}, why
    twin = timm.create_model(name, pretrained=False, num_classes=len(spec.labels), **args).eval()
    try:
        twin.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError:
        return None, {}, f"timm's {name} names or shapes its tensors differently from chexcut's {spec.arch}"
    size = spec.preprocess.image_size
    x = torch.randn((2, spec.preprocess.in_chans, size, size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((torch.sigmoid(twin(x).double()) - torch.sigmoid(model(x).double())).abs().max())
    if not diff <= PARITY:
        return None, {}, f"timm's {name} computes differently (max |diff| {diff:.1e})"
    return twin, args, ""


def data_config(spec: ModelSpec) -> dict:
    """timm's ``pretrained_cfg`` preprocessing for chexcut's: the whole image resized (bilinear) to the model's size,
    no crop (``squash``; ``pad`` letterboxes, timm's ``border``), the model's own mean and std."""
    p = spec.preprocess
    return {"input_size": [p.in_chans, p.image_size, p.image_size], "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "squash" if p.resize == "squash" else "border", "mean": list(p.mean), "std": list(p.std)}


def chexcut_block(spec: ModelSpec, why: str) -> dict:
    """What config.json says for chexcut (timm ignores it): whether the folder needs chexcut, and why."""
    return {"requires_chexcut": bool(why), "why": why or None, "arch": spec.arch, "drop": spec.drop,
            "keep": spec.keep, "num_blocks": spec.num_blocks, "pool": spec.pool, "resize": spec.preprocess.resize,
            "chexcut_version": spec.chexcut_version, "weights": HUB_WEIGHTS,
            "load": "chexcut evaluate FOLDER_OR_hf-hub:ORG/NAME --data DIR"}


def timm_config(twin, spec: ModelSpec, args: dict, licence: str) -> dict:
    """config.json as timm's own ``save_for_hf`` writes it for the twin, with chexcut's preprocessing and labels."""
    import inspect
    import tempfile

    from timm.models import save_for_hf

    from chexcut.reading import read_json

    pre = data_config(spec)
    extra = {"data_config": pre} if "data_config" in inspect.signature(save_for_hf).parameters else {}
    with tempfile.TemporaryDirectory(prefix="chexcut-timm-") as scratch:
        save_for_hf(twin, scratch, model_config={"label_names": list(spec.labels)}, model_args=dict(args),
                    safe_serialization=True, **extra)
        cfg = read_json(Path(scratch) / "config.json")
    pcfg = cfg["pretrained_cfg"]
    pcfg.pop("tag", None)  # timm's default tag names ImageNet weights; these are chexcut's
    pcfg.update(pre, num_classes=len(spec.labels), license=licence)
    cfg["chexcut"] = chexcut_block(spec, "")
    return cfg


def chexcut_config(spec: ModelSpec, why: str, licence: str) -> dict:
    """config.json of a folder timm cannot build: timm's keys (an architecture timm refuses by name) and why."""
    return {"architecture": f"chexcut:{spec.arch}", "num_classes": len(spec.labels), "label_names": list(spec.labels),
            "pretrained_cfg": {**data_config(spec), "num_classes": len(spec.labels), "license": licence},
            "chexcut": chexcut_block(spec, why)}


def public_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as published: local paths (the run folder, a weights file) reduced to their names."""
    weights = dict(spec.weights)
    if weights.get("path"):
        weights["path"] = Path(str(weights["path"])).name
    training = dict(spec.training) if spec.training else None
    if training and training.get("run_dir"):
        training["run_dir"] = Path(str(training["run_dir"])).name
    return replace(spec, weights=weights, training=training)


def check_output(out: Path, force: bool, inputs) -> Path:
    """The output folder: writable, never an input nor a folder holding one, an existing one only with --force."""
    from chexcut.fileio import check_output_folder, same_file

    out = check_output_folder(Path(out), "-o folder")
    for source in inputs:
        if source is None:
            continue
        if same_file(out, source) or out.resolve() in Path(source).resolve().parents:
            raise ChexcutError(f"-o {out} is or holds this command's input {source}; write the folder elsewhere")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ChexcutError(f"{out} exists and is not empty; pass --force to replace it")
    return out


def check_repo_id(repo: str | None) -> None:
    if repo is not None and not REPO_ID.fullmatch(repo):
        raise ChexcutError(f"--push {repo!r}: give a Hugging Face repository as ORG/NAME")


def export_hub(model, out: Path, onnx: bool = False, push: str | None = None, force: bool = False,
               image_size: int | None = None) -> dict:
    """Write ``model`` (a model file, run directory, model folder or hf-hub id) as a Hugging Face model folder at
    ``out``; with ``push``, upload it. ``image_size``: the input size the folder records (default: the model's; a
    ViT's position embeddings resampled by timm). Returns what was written. Nothing is left at ``out`` when writing
    fails."""
    from chexcut.deploy.hubcard import evaluations, hub_licence, readme
    from chexcut.fileio import atomic_folder, write_json, write_text
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.modelfile import load_model, read_spec, save_model
    from chexcut.models.source import ModelSource
    from chexcut.rundir import RunDir

    source = ModelSource.parse(str(model))
    path = source.require_file("export")
    out = check_output(out, force, [model, path, source.run_dir])
    check_repo_id(push)
    size = int(image_size or read_spec(path).preprocess.image_size)
    check_image_size(read_spec(path).arch, size)
    net = load_model(path, image_size=size)
    spec = replace(net.chexcut_spec, preprocess=net.chexcut_spec.preprocess.with_size(size))
    twin, args, why = timm_twin(net, spec)
    licence = hub_licence(spec.weights)["license"]
    config = timm_config(twin, spec, args, licence) if twin is not None else chexcut_config(spec, why, licence)
    run_config = RunDir(source.run_dir).read_config() if source.run_dir else None
    evals = evaluations(source.run_dir)
    name = push or out.resolve().name
    with atomic_folder(out) as tmp:
        save_model(net, tmp / HUB_WEIGHTS, spec=public_spec(spec))
        write_json(tmp / "config.json", config)
        write_text(tmp / "README.md", readme(spec, name, run_config, evals, (twin is not None, why)))
        if onnx:
            from chexcut.deploy.export import export_onnx

            export_onnx(path, tmp / "model.onnx", image_size=size)
    result = {"path": str(out), "model": str(path), "arch": spec.arch, "drop": spec.drop,
              "files": sorted(p.name for p in out.iterdir()), "loads_in": "chexcut" if why else "timm",
              "requires_chexcut": why or None, "architecture": config["architecture"],
              "model_args": config.get("model_args", {}), "evaluations": [n for n, _ in evals], "license": licence}
    if push:
        result["push"] = push_folder(out, push)
    return result


def offline() -> bool:
    """No network to the Hub: ``HF_HUB_OFFLINE`` set, or huggingface.co does not resolve."""
    from chexcut.models.libraries import host_resolves

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return not host_resolves(HUB_URL)


def scrub(text: str) -> str:
    """``text`` without the Hub token (an error message is printed; the token never is)."""
    from huggingface_hub import get_token

    for secret in {os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"), get_token()}:
        if secret:
            text = text.replace(secret, "***")
    return text


def push_folder(folder: Path, repo: str) -> dict:
    """Upload ``folder`` to the Hub repository ``repo`` (created if needed) with huggingface_hub's token; one line
    when there is no network or the Hub refuses, the folder kept."""
    if offline():
        raise ChexcutError(f"no network to push to {HUB_URL}/{repo}: the folder {folder} is kept; push it from a "
                           f"machine with network (`hf upload {repo} {folder}`)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                   commit_message="chexcut export --format hub")
    except Exception as e:  # no login, no permission, the Hub down: the folder stays, the reason in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ChexcutError(scrub(f"pushing {folder} to {repo} failed ({type(e).__name__}: {first}); the folder "
                                 f"is kept")) from None
    return {"repo": repo, "url": str(url), "commit": getattr(commit, "oid", None)}
