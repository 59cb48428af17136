"""Pretraining sources beyond a library's ImageNet weights, declared as data.

A :class:`Source` says which architectures its file fits, the layout the file is published in (and so how its
keys map onto chexcut's model), its preprocessing (channels, normalisation, the size it was trained at), its
licence and where the file comes from. ``--weights NAME`` reads the source's file from chexcut's cache (staged by
``chexcut weights fetch NAME``, from the network or a mirror); ``--weights NAME:PATH`` reads a local copy of the
file or folder exactly as it is published. A checkpoint that does not fit key for key and shape for shape is
refused, naming the first keys that differ. No file's code is ever run: safetensors and plain state dicts are
read as tensors, and pickled models (torchxrayvision's) through :mod:`chexcut.models.unpickle`.

Layouts:

- ``timm``: the library's own weights under a tag (DINOv2's LVD-142M weights are timm's default for its /14 ViTs).
- ``hf-dinov2``: a Hugging Face transformers ``Dinov2Model`` folder (``config.json``, ``model.safetensors``,
  ``preprocessor_config.json``), mapped onto timm's DINOv2 ViT key by key (query, key and value joined into
  timm's ``qkv``); transformers' 4.x and 5.x key names are both read. Its normalisation comes from its own
  ``preprocessor_config.json`` and its licence from its model card's front matter (``README.md``'s
  ``license:``, what the Hub shows) when the folder has them.
- ``txrv``: a torchxrayvision DenseNet-121 (one input channel, 224 px, pixel values scaled to [-1024, 1024]:
  ``mean=0.5, std=1/2048`` on chexcut's [0, 1] input), whose keys are torchvision's; its 18-way classifier and
  operating thresholds are left out (chexcut attaches its own head).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from chexcut.errors import ChexcutError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV2_ARCHS = ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                "vit_base_patch14_reg4_dinov2")
_TXRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_TXRV_REF = "Cohen et al., MIDL 2022 (TorchXRayVision)"
_TXRV_LICENCE = "apache-2.0 (torchxrayvision; the training sets' own terms apply)"


@dataclass(frozen=True)
class Source:
    name: str  # what --weights calls it
    title: str
    archs: tuple[str, ...]  # the architectures its file fits
    layout: str  # timm | hf-dinov2 | txrv
    license: str
    reference: str
    url: str | None  # where the file (or the Hugging Face repository) is published; None: only NAME:PATH
    file: str  # its name in the cache and in a mirror folder (a folder for hf-dinov2)
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN  # on chexcut's [0, 1] input; hf-dinov2 reads its folder's own
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int | None = None  # the size it was trained at (a note when a run uses another)
    notes: str = ""

    def fits(self, arch: str) -> bool:
        return arch in self.archs

    def check_arch(self, arch: str) -> None:
        if not self.fits(arch):
            raise ChexcutError(f"--weights {self.name} fits {', '.join(self.archs)}, not {arch}")

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "archs": list(self.archs), "layout": self.layout,
                "license": self.license, "reference": self.reference, "url": self.url, "in_chans": self.in_chans,
                "mean": list(self.mean), "std": list(self.std), "image_size": self.image_size, "notes": self.notes}


def _txrv(name: str, trained_on: str, file: str) -> Source:
    return Source(name=name, title=f"torchxrayvision DenseNet-121 ({trained_on})", archs=("densenet121",),
                  layout="txrv", license=_TXRV_LICENCE, reference=_TXRV_REF, url=_TXRV_URL + file, file=file,
                  in_chans=1, mean=(0.5,), std=(1 / 2048,), image_size=224,
                  notes="one input channel; published as a pickled model, read without running its code")


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source(name="dinov2", title="DINOv2 (self-supervised on LVD-142M natural images)", archs=DINOV2_ARCHS,
           layout="timm", license="apache-2.0", reference="Oquab et al., TMLR 2024 (DINOv2)",
           url="https://huggingface.co/timm", file="(timm's cache)", image_size=518,
           notes="timm's default weights of its /14 ViTs; `imagenet` on these architectures loads the same file"),
    Source(name="rad-dino", title="RAD-DINO (DINOv2 ViT-B/14 self-supervised on chest X-rays)",
           archs=("vit_base_patch14_dinov2",), layout="hf-dinov2",
           license="msrla (Microsoft Research License Agreement: research use only)",
           reference="Perez-Garcia et al., Nature Machine Intelligence 2025 (RAD-DINO)",
           url="https://huggingface.co/microsoft/rad-dino", file="rad-dino", mean=(0.5307,) * 3, std=(0.2583,) * 3,
           image_size=518, notes="the Hugging Face folder as published; normalisation from its preprocessor config"),
    Source(name="hf-dinov2", title="Any Hugging Face transformers Dinov2Model checkpoint",
           archs=DINOV2_ARCHS, layout="hf-dinov2", license="unknown (the checkpoint's own terms: check them)",
           reference="the checkpoint's own", url=None, file="hf-dinov2",
           notes="only as hf-dinov2:FOLDER (e.g. a chest X-ray DINOv2 of your own); its size must match the arch"),
    _txrv("txrv-all", "NIH, PadChest, CheXpert, MIMIC-CXR, Google NIH labels, OpenI, RSNA",
          "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
    _txrv("txrv-nih", "NIH ChestX-ray14", "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"),
)}


def parse(weights) -> tuple[Source, Path | None] | None:
    """``NAME`` or ``NAME:PATH`` -> (the source, the local copy or None); None when ``weights`` names no source
    (``imagenet``, ``none``, a state dict file). A file literally named like a source is ambiguous: refused."""
    text = str(weights)
    name, sep, rest = text.partition(":")
    source = SOURCES.get(name.lower())
    if source is None:
        return None
    if not sep and Path(text).exists():
        raise ChexcutError(f"--weights {text} names both the file {text!r} and the source {source.name}; write "
                           f"./{text} for the file")
    if sep and not rest:
        raise ChexcutError(f"--weights {text}: give the path after the colon ({source.name}:PATH)")
    if not sep and source.url is None:
        raise ChexcutError(f"--weights {source.name} has no published file: give {source.name}:PATH")
    return source, (Path(rest) if sep else None)


def licence_of(source: Source, preprocessing: dict) -> str:
    """The licence a loaded source carries: its declared one, unless that is unknown and the folder's own model card
    names one (a folder never makes a research-only source less restricted)."""
    from chexcut.models.weights import non_commercial

    found = preprocessing.get("license")
    if not found or (non_commercial(source.license) and not non_commercial(found)):
        return source.license
    return found


def licence_notes(weights) -> list[str]:
    """One line per pretraining source among ``weights`` whose licence forbids commercial use (a research-only or
    CC BY-NC licence; a Hugging Face folder's own model card read): what a study plan says before any run."""
    from chexcut.models.weights import non_commercial

    notes = []
    for w in weights:
        named = parse(w)
        if named is None:
            continue
        source, path = named
        found = _hub_licence(Path(path) / "README.md") if path is not None and source.layout == "hf-dinov2" else None
        licence = licence_of(source, {"license": found})
        if non_commercial(licence):
            notes.append(f"{source.name} is licensed {licence}: models trained from it inherit its terms "
                         f"(no commercial use)")
    return notes


def cached_path(source: Source) -> Path:
    """Where ``weights fetch`` stages the source's file (or folder) in chexcut's cache."""
    from chexcut.fileio import cache_dir

    return cache_dir() / "sources" / source.name / source.file


def locate(source: Source, path: Path | None) -> Path:
    """The source's file or folder: the given copy, else the staged one (one line saying how to stage it)."""
    if path is not None:
        if not path.exists():
            raise ChexcutError(f"--weights {source.name}:{path}: {path} does not exist")
        return path
    staged = cached_path(source)
    if staged.exists():
        return staged
    raise ChexcutError(f"the {source.name} weights are not staged at {staged}: on a machine with network run "
                       f"`chexcut weights fetch {source.name}` (or --mirror DIR), or pass --weights "
                       f"{source.name}:PATH to the file or folder as published ({source.url})")


# ----------------------------------------------------------------------------- layouts

_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_BLOCK = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
             "norm2.bias": "norm2.bias", "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
             "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
             "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
             "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
             "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias"}
_HF_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
           "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.register_tokens": "reg_token", "embeddings.patch_embeddings.projection.weight":
           "patch_embed.proj.weight", "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


def hf_dinov2_to_timm(state: dict) -> dict:
    """A transformers ``Dinov2Model`` state dict (4.x or 5.x key names, a ``dinov2.`` prefix allowed) in timm's
    ViT key names: query, key and value joined into ``qkv``, the mask token (pretraining only) left out. A key it
    does not know is refused, naming it."""
    import torch

    out, qkv = {}, {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")
        if key == "embeddings.mask_token" or key.startswith("classifier."):  # pretraining's mask, a task's head
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_LAYER.fullmatch(key)
        rest = m.group(2) if m else ""
        part, _, kind = rest.rpartition(".")
        if m and rest in _HF_BLOCK:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK[rest]}"] = value
        elif m and part in _HF_QKV and kind in ("weight", "bias"):
            qkv.setdefault((m.group(1), kind), {})[_HF_QKV[part]] = value
        else:
            raise ChexcutError(f"the transformers DINOv2 checkpoint holds {key!r}, which no timm ViT key matches "
                               f"(a DINOv2 with SwiGLU or another model?)")
    if "reg_token" in out and "pos_embed" in out:  # timm's register ViTs embed no position for the class token
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ChexcutError(f"the transformers DINOv2 checkpoint's layer {block} lacks part of its attention")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def weights_file(path: Path) -> Path:
    """The file a located source's tensors are read from: the file itself, or a Hugging Face folder's
    ``model.safetensors`` (else ``pytorch_model.bin``)."""
    path = Path(path)
    if path.is_file():
        return path
    found = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if found is None:
        raise ChexcutError(f"{path}: no model.safetensors or pytorch_model.bin (a Hugging Face model folder)")
    return found


def _hf_dinov2(folder: Path, source: Source) -> tuple[dict, dict]:
    """(timm state dict, preprocessing) of a transformers Dinov2Model folder (or its safetensors file)."""
    from chexcut.models.tensors import read_state_dict
    from chexcut.reading import read_json

    folder = Path(folder)
    tensors = weights_file(folder)
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if config and (config.get("model_type") not in ("dinov2", "dinov2_with_registers")
                   or config.get("use_swiglu_ffn") or config.get("hidden_act", "gelu") != "gelu"):
        raise ChexcutError(f"{folder}/config.json describes a {config.get('model_type')} model "
                           f"(swiglu={config.get('use_swiglu_ffn')}, act={config.get('hidden_act')}); "
                           f"{source.name} reads a DINOv2 ViT with GELU MLPs")
    pre = {"mean": source.mean, "std": source.std}
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        p = read_json(processor)
        if isinstance(p, dict) and isinstance(p.get("image_mean"), list) and isinstance(p.get("image_std"), list):
            pre = {"mean": tuple(float(x) for x in p["image_mean"]), "std": tuple(float(x) for x in p["image_std"])}
    licence = _hub_licence(folder / "README.md")
    if licence:
        pre["license"] = licence
    return hf_dinov2_to_timm(read_state_dict(tensors)), pre


def _hub_licence(readme: Path) -> str | None:
    """The ``license`` of a Hugging Face model card's YAML front matter (what the Hub shows), or None; the front
    matter read with bounded work (no aliases, 20 levels), as every YAML a user gives."""
    import yaml

    from chexcut.reading import parse_yaml

    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")[:65536]
    if not text.startswith("---"):
        return None
    try:
        meta = parse_yaml(text[3:].split("\n---", 1)[0], readme, 20)
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if isinstance(value, (str, int, float)) and str(value).strip() else None


def _txrv_state(path: Path) -> dict:
    """A torchxrayvision DenseNet's tensors (a pickled model, a state dict, or safetensors), its classifier and
    operating thresholds left out."""
    from chexcut.models.tensors import is_safetensors, read_state_dict
    from chexcut.models.unpickle import read_pickled_model

    path = Path(path)
    if path.is_dir():
        raise ChexcutError(f"{path} is a folder; a torchxrayvision source is one .pt file")
    state = read_state_dict(path) if is_safetensors(path) else read_pickled_model(path)
    return {k: v for k, v in state.items() if not k.startswith(("classifier.", "op_threshs", "upsample."))}


def read_source(source: Source, path: Path) -> tuple[dict, dict]:
    """(state dict in the architecture's own key names, preprocessing ``{"mean", "std"}``) of a located file."""
    if source.layout == "hf-dinov2":
        return _hf_dinov2(path, source)
    if source.layout == "txrv":
        return _txrv_state(path), {"mean": source.mean, "std": source.std}
    from chexcut.models.tensors import read_state_dict

    return read_state_dict(path), {"mean": source.mean, "std": source.std}


# ----------------------------------------------------------------------------- staging (chexcut weights fetch)

def _discard(path: Path) -> None:
    """A partial download or copy (a file, or a Hugging Face folder) removed."""
    import shutil

    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def fetch_source(source: Source, mirror: str | None = None, to: Path | None = None, progress=None) -> dict:
    """Stage the source's file or folder: from ``mirror`` (a folder holding it under its name, or a URL) or the
    network, into chexcut's cache (or into folder ``to``: a mirror to carry to an offline machine). What arrives
    is read through its layout before it is installed, so a damaged or foreign file never lands in the cache."""
    import os
    import shutil

    from chexcut.fileio import writable_folder
    from chexcut.models.libraries import host_resolves
    from chexcut.models.weights import download

    dest = (Path(to) if to is not None else cached_path(source).parent) / source.file
    if to is None and mirror is None and dest.exists():
        return {"source": source.name, "path": str(dest), "action": "cached"}
    writable_folder(dest.parent, "weights cache folder" if to is None else "mirror folder")
    part = dest.with_name(f".{dest.name}.part")
    if mirror is not None and "://" not in mirror:
        src = Path(mirror) / source.file
        if not src.exists():
            raise ChexcutError(f"{src}: not in the mirror folder (`chexcut weights fetch {source.name} --to DIR` "
                               f"stages it on a machine with network)")
        _discard(part)
        try:
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, part)
        except (OSError, shutil.Error) as e:
            _discard(part)
            raise ChexcutError(f"{src}: cannot be copied from the mirror ({str(e)[:160]})") from None
    elif source.url is None:
        raise ChexcutError(f"{source.name} has no published file to fetch; give --weights {source.name}:PATH")
    elif source.layout == "hf-dinov2":  # a Hugging Face repository: its config, preprocessing and weights
        if not host_resolves(source.url):
            raise ChexcutError(f"no network to download {source.url}: stage it with --mirror DIR (a folder holding "
                               f"{source.file}/), or pass --weights {source.name}:PATH")
        from huggingface_hub import snapshot_download

        snapshot_download(source.url.removeprefix("https://huggingface.co/"), local_dir=part,
                          allow_patterns=["config.json", "preprocessor_config.json", "model.safetensors"])
    else:
        url = f"{mirror.rstrip('/')}/{source.file}" if mirror is not None else source.url
        if not host_resolves(url):
            raise ChexcutError(f"no network to download {url}: stage it with --mirror DIR, or pass --weights "
                               f"{source.name}:PATH")
        part = download(url, dest, progress=progress)
    try:
        read_source(source, part)
    except BaseException:
        _discard(part)
        raise
    if dest.is_dir():
        shutil.rmtree(dest)
    os.replace(part, dest)
    return {"source": source.name, "path": str(dest), "action": "staged" if to is not None else "installed"}


def status(source: Source) -> dict:
    """What ``weights list`` shows of a source: what it fits, its licence, and whether it is staged."""
    if source.layout == "timm":
        from chexcut.models.libraries import library_of
        from chexcut.models.registry import get_arch

        cached = [a for a in source.archs if library_of(get_arch(a)).is_cached(get_arch(a))]
        return {**source.summary(), "staged": f"{len(cached)} of {len(source.archs)}" if cached else "no",
                "path": "timm's cache (`weights fetch` each architecture)"}
    staged = cached_path(source)
    return {**source.summary(), "staged": "NAME:PATH only" if source.url is None else
            "yes" if staged.exists() else "no", "path": str(staged)}
