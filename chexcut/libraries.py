"""Model libraries (torchvision, timm): one object each that builds, names, finds and loads weights.

Everything chexcut does differently per library lives here, behind one small interface, so
no other module asks "is this torchvision?". An :class:`chexcut.archs.Arch` names its library
object; :func:`chexcut.surgery.truncate` and friends only call its methods.

Nothing here imports torch at module level: ``chexcut list`` and completion stay fast.
"""

from __future__ import annotations

from pathlib import Path


class Library:
    """The interface: build an architecture, describe and locate its ImageNet weights, load them."""

    name: str = ""

    def build(self, arch):
        """The library's full ImageNet architecture (1000 classes), randomly initialised."""
        raise NotImplementedError

    def weights_meta(self, arch) -> dict:
        """Offline metadata of the arch's ImageNet weights: top1, imagenet_params, url, file, id."""
        raise NotImplementedError

    def cache_path(self, arch) -> Path:
        """Where this library's cache keeps (or would keep) the arch's ImageNet weights."""
        raise NotImplementedError

    def is_cached(self, arch) -> bool:
        raise NotImplementedError

    def state_dict(self, arch) -> dict:
        """The ImageNet state dict, from the cache or downloaded by the library's own client.

        Raises any exception the library raises (no network, corrupt cache): the caller words it."""
        raise NotImplementedError

    def advice(self, arch) -> str:
        """How a user without network gets the weights into place."""
        raise NotImplementedError


def host_resolves(url: str) -> bool:
    """Fail fast offline: the hub clients otherwise retry for a minute before giving up."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except OSError:
        return False


class Torchvision(Library):
    name = "torchvision"

    def _weights(self, arch):
        from torchvision.models import get_model_weights

        return get_model_weights(arch.name)[arch.weights]

    def build(self, arch):
        import torchvision

        return torchvision.models.get_model(arch.name, weights=None, **arch.build_kwargs)

    def weights_meta(self, arch) -> dict:
        w = self._weights(arch)
        return {
            "top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            "imagenet_params": w.meta["num_params"],
            "url": w.url,
            "file": w.url.rsplit("/", 1)[-1],
            "id": f"torchvision:{arch.name}.{arch.weights}",
        }

    def cache_path(self, arch) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / self.weights_meta(arch)["file"]

    def is_cached(self, arch) -> bool:
        return self.cache_path(arch).is_file()

    def state_dict(self, arch) -> dict:
        if not self.is_cached(arch) and not host_resolves(self.weights_meta(arch)["url"]):
            raise ConnectionError("no network")
        return self._weights(arch).get_state_dict(progress=False, check_hash=True)

    def advice(self, arch) -> str:
        return (f"download {self.weights_meta(arch)['url']} and place it at {self.cache_path(arch)}, "
                f"or pass --weights PATH to a local copy")


class Timm(Library):
    name = "timm"

    def _cfg(self, arch):
        import timm

        return timm.models.get_pretrained_cfg(f"{arch.name}.{arch.weights}")

    def build(self, arch):
        import timm

        return timm.create_model(arch.name, pretrained=False, **arch.build_kwargs)

    def weights_meta(self, arch) -> dict:
        hub = self._cfg(arch).hf_hub_id
        return {
            "top1": arch.top1,
            "imagenet_params": None,
            "url": f"https://huggingface.co/{hub}/resolve/main/model.safetensors",
            "file": "model.safetensors",
            "hf_hub_id": hub,
            "id": f"timm:{arch.name}.{arch.weights}",
        }

    def cache_path(self, arch) -> Path:
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE) / ("models--" + self.weights_meta(arch)["hf_hub_id"].replace("/", "--"))

    def _cached_file(self, arch) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(self.weights_meta(arch)["hf_hub_id"], "model.safetensors")
        return path if isinstance(path, str) else None

    def is_cached(self, arch) -> bool:
        return self._cached_file(arch) is not None

    def state_dict(self, arch) -> dict:
        from chexcut.surgery import read_state_dict

        meta = self.weights_meta(arch)
        path = self._cached_file(arch)
        if path is None:
            if not host_resolves(meta["url"]):
                raise ConnectionError("no network")
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(meta["hf_hub_id"], "model.safetensors")
        return read_state_dict(Path(path))

    def advice(self, arch) -> str:
        meta = self.weights_meta(arch)
        return (f"download {meta['url']} (into the Hugging Face cache at {self.cache_path(arch)}, e.g. with "
                f"`huggingface-cli download {meta['hf_hub_id']}`), or pass --weights PATH to the downloaded file")


TORCHVISION = Torchvision()
TIMM = Timm()
