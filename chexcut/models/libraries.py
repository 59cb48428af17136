"""Model libraries (torchvision, timm): one object each that builds, names, finds and loads weights.

Everything chexcut does differently per library lives here, behind one small interface, so
no other module asks "is this torchvision?". An :class:`chexcut.models.registry.Arch` names its library
object; :func:`chexcut.models.surgery.truncate` and friends only call its methods.

Nothing here imports torch at module level: ``chexcut list`` and completion stay fast.
"""

from __future__ import annotations

from pathlib import Path

#: What ``weights_meta`` says of every arch's weights that ``list``, ``inspect`` and ``weights list`` show (and the
#: shipped anatomy store keeps, so they answer without importing torch).
WEIGHTS_KEYS = ("top1", "id", "license", "mean", "std", "input_size")


class Library:
    """The interface: build an architecture, describe and locate its ImageNet weights, load them."""

    name: str = ""

    def build(self, arch, image_size: int | None = None):
        """The library's full ImageNet architecture (1000 classes), randomly initialised; a family declared
        ``sized`` is built for ``image_size`` (its position embeddings, its windows)."""
        raise NotImplementedError

    def weights_meta(self, arch) -> dict:
        """Offline metadata of the arch's ImageNet weights: top1, imagenet_params, url, file, id, and what the
        weights carry: mean, std (their input normalisation), input_size (what they were trained at) and
        license."""
        raise NotImplementedError

    def adapt_state(self, arch, state: dict, model) -> dict:
        """A checkpoint of the full architecture made to fit ``model`` by the library's own rules (timm resamples
        position embeddings and relative-position tables for another input size); unchanged by default."""
        return state

    def cache_path(self, arch) -> Path:
        """Where this library's cache keeps (or would keep) the arch's ImageNet weights."""
        raise NotImplementedError

    def state_dict(self, arch) -> dict:
        """The ImageNet state dict, from the cache or downloaded by the library's own client
        (:func:`chexcut.models.weights.ensure_available` first fetches from a mirror or says there is no network).

        Raises any exception the library raises (no network, corrupt cache): the caller words it."""
        raise NotImplementedError

    # --- staging (chexcut weights): names, places, hashes
    def mirror_name(self, arch) -> str:
        """The file's name in a mirror folder."""
        raise NotImplementedError

    def known_sha256(self, arch) -> str | None:
        """The sha256 (or a prefix of it) the library publishes for the file, if any."""
        return None

    def blob_sha256(self, arch, path: Path) -> str | None:
        """A sha256 the cache layout itself records for ``path`` (a content-addressed blob), if any."""
        return None

    def size_mb(self, arch) -> float | None:
        return None

    def cached_file(self, arch) -> Path | None:
        """The weights file the library's loader would read, when it is there."""
        raise NotImplementedError

    def place_path(self, arch) -> Path:
        """Where a hand-copied file must go for the loader to find it."""
        raise NotImplementedError

    def download(self, arch, progress=None) -> Path:
        """From the network through the library's own client, into its cache."""
        raise NotImplementedError

    def install(self, arch, part: Path) -> Path:
        """Move a verified downloaded file into the library's cache; returns where it lies."""
        raise NotImplementedError

    def is_cached(self, arch) -> bool:
        return self.cached_file(arch) is not None


def host_resolves(url: str) -> bool:
    """Fail fast offline: the hub clients otherwise retry for a minute before giving up."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except OSError:
        return False


def staged_path(arch) -> Path:
    """chexcut's own place for a hand-copied weights file (checked before the library's hub)."""
    from chexcut.fileio import cache_dir

    return cache_dir() / "weights" / library_of(arch).mirror_name(arch)


#: torchvision's own words on its weights: the library is BSD-3-Clause; the weights "may have their own licenses or
#: terms and conditions derived from the dataset used for training" (ImageNet's, for these).
TORCHVISION_LICENSE = "bsd-3-clause (torchvision; ImageNet's terms apply to the weights)"


class Torchvision(Library):
    name = "torchvision"

    def _weights(self, arch):
        from torchvision.models import get_model_weights

        return get_model_weights(arch.name)[arch.weights]

    def build(self, arch, image_size: int | None = None):
        import torchvision

        return torchvision.models.get_model(arch.name, weights=None, **arch.build_kwargs)

    def weights_meta(self, arch) -> dict:
        w = self._weights(arch)
        crop = getattr(w.transforms(), "crop_size", None)  # the transforms it was evaluated with
        size = crop[0] if crop else None
        return {
            "top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            "imagenet_params": w.meta["num_params"],
            "url": w.url,
            "file": w.url.rsplit("/", 1)[-1],
            "id": f"torchvision:{arch.name}.{arch.weights}",
            "mean": list(arch.mean), "std": list(arch.std), "input_size": size,
            "license": TORCHVISION_LICENSE,
        }

    def cache_path(self, arch) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / self.weights_meta(arch)["file"]

    place_path = cache_path

    def mirror_name(self, arch) -> str:
        return self.weights_meta(arch)["file"]

    def known_sha256(self, arch) -> str | None:
        import re

        m = re.search(r"-([a-f0-9]{6,})\.", self.mirror_name(arch))  # torch.hub's convention
        return m.group(1) if m else None

    def size_mb(self, arch) -> float | None:
        return self._weights(arch).meta.get("_file_size")

    def cached_file(self, arch) -> Path | None:
        p = self.cache_path(arch)
        return p if p.is_file() else None

    def download(self, arch, progress=None) -> Path:
        import torch

        from chexcut.fileio import writable_folder

        meta, dest = self.weights_meta(arch), self.cache_path(arch)
        writable_folder(dest.parent, "torchvision weights cache folder")
        torch.hub.download_url_to_file(meta["url"], str(dest), hash_prefix=self.known_sha256(arch), progress=True)
        return dest

    def install(self, arch, part: Path) -> Path:
        import os

        dest = self.cache_path(arch)
        os.replace(part, dest)
        return dest

    def state_dict(self, arch) -> dict:
        return self._weights(arch).get_state_dict(progress=False, check_hash=True)


SELF_NAMED = "chexcut-installed"  # in a HF cache repo folder: blobs chexcut named itself (no published hash)


class Timm(Library):
    name = "timm"

    def _cfg(self, arch):
        import timm

        return timm.models.get_pretrained_cfg(f"{arch.name}.{arch.weights}")

    def build(self, arch, image_size: int | None = None):
        import timm

        sized = {"img_size": int(image_size)} if arch.family.sized and image_size else {}
        return timm.create_model(arch.name, pretrained=False, **arch.build_kwargs, **sized)

    def weights_meta(self, arch) -> dict:
        cfg = self._cfg(arch)
        hub = cfg.hf_hub_id
        return {
            "top1": arch.top1,
            "imagenet_params": None,
            "url": f"https://huggingface.co/{hub}/resolve/main/model.safetensors",
            "file": "model.safetensors",
            "hf_hub_id": hub,
            "id": f"timm:{arch.name}.{arch.weights}",
            "mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std],
            "input_size": int(cfg.input_size[-1]), "license": cfg.license or "unknown",
        }

    def adapt_state(self, arch, state: dict, model) -> dict:
        """timm's ``checkpoint_filter_fn`` of the model's module (the one ``timm.create_model(pretrained=True)``
        applies): a ViT's position embeddings and a Swin's relative-position tables resampled to this model's
        input size. Only for a family built for its size: the others load key for key."""
        if not arch.family.sized:
            return state
        import importlib

        from timm.models import model_entrypoint

        module = importlib.import_module(model_entrypoint(arch.name).__module__)
        fit = getattr(module, "checkpoint_filter_fn", None)
        own = model.state_dict()
        if fit is None or all(k in own and own[k].shape == v.shape for k, v in state.items()):
            return state
        return fit(state, model)

    @staticmethod
    def hub_cache() -> Path:
        """The Hugging Face hub cache, read from the environment now (huggingface_hub fixes it at import)."""
        import os

        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"])
        home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
        return Path(home).expanduser() / "hub"

    def cache_path(self, arch) -> Path:
        return self.hub_cache() / ("models--" + self.weights_meta(arch)["hf_hub_id"].replace("/", "--"))

    def mirror_name(self, arch) -> str:
        return f"{arch.name}.{arch.weights}.safetensors"

    def place_path(self, arch) -> Path:
        return staged_path(arch)

    def blob_sha256(self, arch, path: Path) -> str | None:
        """The blob's name, when the hub named it (a file chexcut installed from a mirror is named by its own
        hash, which checks nothing: those are listed in ``chexcut-installed`` and give None, "unverified")."""
        real = Path(path).resolve()
        if real.parent.name != "blobs" or len(real.name) != 64:
            return None
        mine = real.parent.parent / SELF_NAMED
        return None if mine.is_file() and real.name in mine.read_text().split() else real.name

    def cached_file(self, arch) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        staged = self.place_path(arch)
        if staged.is_file():
            return staged
        path = try_to_load_from_cache(self.weights_meta(arch)["hf_hub_id"], "model.safetensors",
                                      cache_dir=self.hub_cache())
        return Path(path) if isinstance(path, str) else None

    def download(self, arch, progress=None) -> Path:
        from huggingface_hub import hf_hub_download

        meta = self.weights_meta(arch)
        return Path(hf_hub_download(meta["hf_hub_id"], "model.safetensors", cache_dir=self.hub_cache()))

    def install(self, arch, part: Path) -> Path:
        """Into the Hugging Face cache layout: blobs/<sha256>, snapshots/<rev>/model.safetensors, refs/main."""
        import hashlib
        import os
        import shutil

        from chexcut.fileio import sha256_file, writable_folder

        sha = sha256_file(part)
        repo = writable_folder(self.cache_path(arch), "Hugging Face cache folder")
        rev = hashlib.sha1(sha.encode()).hexdigest()
        blob, snap = repo / "blobs" / sha, repo / "snapshots" / rev / "model.safetensors"
        blob.parent.mkdir(parents=True, exist_ok=True)
        snap.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), blob)
        snap.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, snap.parent), snap)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
        with open(repo / SELF_NAMED, "a") as f:  # this blob's name is its own hash: not a published one
            f.write(sha + "\n")
        return snap

    def state_dict(self, arch) -> dict:
        from chexcut.models.tensors import read_state_dict

        meta = self.weights_meta(arch)
        path = self.cached_file(arch)
        if path is None:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(meta["hf_hub_id"], "model.safetensors", cache_dir=self.hub_cache()))
        return read_state_dict(path)


TORCHVISION = Torchvision()
TIMM = Timm()

LIBRARIES: dict[str, Library] = {lib.name: lib for lib in (TORCHVISION, TIMM)}


def library_of(arch) -> Library:
    """The :class:`Library` object that builds ``arch`` (a registry entry names its library)."""
    return LIBRARIES[arch.library]


def weights_meta(arch) -> dict:
    """Offline ImageNet metadata of the arch's weights: top1, params, url/hub id, file name."""
    return library_of(arch).weights_meta(arch)
