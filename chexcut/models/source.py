"""What a MODEL argument names: a chexcut model file, a finetune run directory, a Hugging Face model folder
(``chexcut export --format hub``) or its ``hf-hub:ORG/NAME`` id, or an architecture.

One parser for every command that takes a model (inspect, finetune, evaluate, explain, bench, export), so the
rules ("a path that exists or ends in .safetensors is a file; a folder with ``model.safetensors`` and no
``best.safetensors`` is a Hugging Face model folder, any other folder a run; ``hf-hub:`` names a model folder in
the Hugging Face cache, read offline; anything else is an architecture name") live in one place. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir

HUB_PREFIX = "hf-hub:"
HUB_WEIGHTS = "model.safetensors"  # a Hugging Face model folder's weights (timm's name; chexcut's spec inside)


def cached_hub_folder(repo_id: str) -> Path:
    """The snapshot folder of Hugging Face model repository ``repo_id`` (``ORG/NAME``, optionally ``@REVISION``) in
    the Hugging Face cache, found offline (a published model is staged like weights: downloaded once on a machine
    with network); one line saying how to stage it when it is not there."""
    import re

    from chexcut.models.libraries import Timm

    repo, _, revision = repo_id.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo):
        raise ChexcutError(f"{HUB_PREFIX}{repo_id}: give a Hugging Face model id as {HUB_PREFIX}ORG/NAME")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision or None, local_files_only=True,
                                   cache_dir=Timm.hub_cache())
    except Exception:  # not cached (or a revision never fetched): huggingface_hub's own errors, worded once
        raise ChexcutError(f"{HUB_PREFIX}{repo_id} is not in the Hugging Face cache ({Timm.hub_cache()}): on a "
                           f"machine with network run `hf download {repo}` (the same HF_HOME), or give the model "
                           f"folder itself") from None
    if not (Path(folder) / HUB_WEIGHTS).is_file():
        raise ChexcutError(f"{HUB_PREFIX}{repo_id}: the cached repository has no {HUB_WEIGHTS}")
    return Path(folder)


@dataclass(frozen=True)
class ModelSource:
    """A model file (``file``; from a run directory, its best model) or an architecture to cut inline."""

    file: Path | None = None
    run_dir: Path | None = None
    arch: str | None = None
    drop: int = 0
    weights: str = "imagenet"
    in_chans: int | None = None  # None: 3, or the pretraining source's own
    seed: int = 0
    interim: str | None = None  # a run still training (or stopped): its best model so far, and why

    @classmethod
    def parse(cls, target: str, *, drop: int | None = None, keep: int | None = None, weights: str = "imagenet",
              in_chans: int | None = None, seed: int = 0) -> "ModelSource":
        """``target`` as a file, a run directory or an architecture name (with drop/keep/weights)."""
        from chexcut.models.registry import get_arch, resolve_drop

        if target.startswith(HUB_PREFIX):
            target = str(cached_hub_folder(target[len(HUB_PREFIX):]))
        p = Path(target)
        if p.is_dir() and not RunDir(p).best.exists() and (p / HUB_WEIGHTS).is_file():
            if drop is not None or keep is not None:
                raise ChexcutError("--drop/--keep apply to an architecture name; a published model is already cut")
            return cls(file=p / HUB_WEIGHTS)
        if p.is_dir():
            if drop is not None or keep is not None:
                raise ChexcutError("--drop/--keep apply to an architecture name; a run's model is already cut")
            rd = RunDir(p)
            state = rd.read_state()
            status = state.get("status")
            if not rd.best.is_file():
                if status == "finished":
                    raise ChexcutError(f"{p} finished without a best model: "
                                       f"{state.get('reason') or 'no label was evaluable on its validation set'}")
                if status:
                    raise ChexcutError(f"{p} has no best model yet: its finetune is {status} and saves one at its "
                                       f"first validation")
                raise ChexcutError(f"{p} is a folder without best.safetensors: not a finetune run")
            interim = None if status == "finished" else (status or "unknown")
            return cls(file=rd.best, run_dir=p, interim=interim)
        if p.is_file() or target.endswith(".safetensors"):
            if drop is not None or keep is not None:
                raise ChexcutError("--drop/--keep apply to an architecture name; the model file is already cut")
            if not p.is_file():
                raise ChexcutError(f"model file not found: {p}")
            return cls(file=p)
        a = get_arch(target)
        return cls(arch=a.name, drop=resolve_drop(a, drop, keep), weights=weights, in_chans=in_chans, seed=seed)

    @property
    def is_file(self) -> bool:
        return self.file is not None

    def spec(self) -> dict:
        """The model file's spec (one clear error when it is not a chexcut model)."""
        from chexcut.models.spec import read_spec

        if self.file is None:
            raise ChexcutError(f"{self.arch} is an architecture name; a model file or run directory is needed here")
        return read_spec(self.file)

    def require_file(self, what: str) -> Path:
        if self.file is None:
            raise ChexcutError(f"{what} needs a model file or a finetune run directory, not the architecture "
                               f"name {self.arch!r} (cut one with `chexcut truncate`)")
        return self.file

    def to_json(self) -> dict:
        """What finetune records as ``model_source`` (and :func:`chexcut.training.session.build_model` reads)."""
        if self.file is not None:
            return {"file": str(self.file)}
        return {"arch": self.arch, "drop": self.drop, "weights": self.weights, "in_chans": self.in_chans,
                "seed": self.seed}
