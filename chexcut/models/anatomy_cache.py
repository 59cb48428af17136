"""A disk cache for :func:`chexcut.models.anatomy.anatomy`, so `chexcut inspect` need not import torch.

Importing torch + torchvision alone takes ~2.5 s on a 2-core machine; the anatomy itself
takes ~0.1 s on the meta device. The result is a pure function of the architecture, the
image size, the head width and the installed library versions, so it is cached under
``cache_dir()/anatomy/`` keyed by all of those. A corrupt or unwritable cache is ignored.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version


def _versions() -> str:
    out = []
    for pkg in ("torch", "torchvision", "timm"):
        try:
            out.append(f"{pkg}{version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg}-none")
    return "-".join(out)


def cached_anatomy(name: str, image_size: int, n_labels: int) -> dict:
    """``anatomy(name, image_size, n_labels).to_json()``, from the cache when it is there."""
    from chexcut import __version__
    from chexcut.fileio import cache_dir, write_json
    from chexcut.models.registry import get_arch

    arch = get_arch(name).name
    path = cache_dir() / "anatomy" / f"{arch}-{image_size}-{n_labels}-chexcut{__version__}-{_versions()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from chexcut.models.anatomy import anatomy

    result = anatomy(arch, image_size, n_labels).to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    except OSError:
        pass
    return result
