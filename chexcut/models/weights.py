"""ImageNet weights you can stage ahead: list them, fetch them (from the network or a mirror), verify them.

Where each library keeps its weights (its own cache, found by its own loader):

- torchvision: ``$TORCH_HOME/hub/checkpoints/<file>``; the file name carries the first hex digits of the
  file's sha256 (``resnet18-f37072fd.pth``), which is what "verified" checks.
- timm: the Hugging Face cache (``models--timm--<arch>.<tag>/``), whose blobs are named by their sha256.
  A file copied by hand can also lie at ``$CHEXCUT_CACHE/weights/<arch>.<tag>.safetensors``
  (:func:`staged_path`), where chexcut looks before the hub.

A *mirror* is a folder or an http(s) URL serving the files under their mirror names (:func:`mirror_name`):
the torchvision file name, or ``<arch>.<tag>.safetensors`` for timm. ``chexcut weights fetch ARCH --to DIR``
writes such a folder on a machine with network; copy it to the cluster and point ``--mirror`` or
``CHEXCUT_WEIGHTS_MIRROR`` at it. Every download goes to a ``.part`` file beside its destination (resumed
with an HTTP Range request when the server allows), is verified (size, hash, an HTML error page, and that
its tensors fit the architecture), and only then renamed into place; a file that fails is deleted and
reported with its URL.

``CHEXCUT_WEIGHTS_SHA256="arch=HEX,..."`` replaces the expected sha256 (prefix) of an architecture's file.
It exists for tests, which serve generated files; it is announced on stderr whenever it is in effect.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.fileio import sha256_file, writable_folder
from chexcut.models.libraries import host_resolves, library_of, staged_path  # noqa: F401 (staged_path: re-exported)

#: Words of a licence identifier that mean "not for commercial use" (CC BY-NC's ``nc``, research-only terms).
NON_COMMERCIAL_WORDS = frozenset({"nc", "noncommercial", "research", "msrla"})


def non_commercial(license: str | None) -> bool:
    """Whether a weights licence (an SPDX-like id such as ``cc-by-nc-4.0``, or words) forbids commercial use."""
    import re

    text = str(license or "").lower()
    return bool(set(re.split(r"[^a-z]+", text)) & NON_COMMERCIAL_WORDS) or "non-commercial" in text


def licence_note(weights: dict) -> str | None:
    """The one line a run starting from non-commercial weights prints (and records), or None."""
    if not non_commercial(weights.get("license")):
        return None
    name = weights.get("name") or weights.get("id") or weights.get("path") or "the starting weights"
    return (f"{name} are licensed {weights['license']}: models trained from them inherit its terms "
            f"(no commercial use)")


MIRROR_ENV = "CHEXCUT_WEIGHTS_MIRROR"
SHA256_ENV = "CHEXCUT_WEIGHTS_SHA256"


def mirror_name(arch) -> str:
    """The file's name in a mirror folder."""
    return library_of(arch).mirror_name(arch)


def expected_sha256(arch) -> str | None:
    """The known sha256 (or its prefix) of the arch's file; the test override when set."""
    override = dict(part.split("=", 1) for part in os.environ.get(SHA256_ENV, "").split(",") if "=" in part)
    if arch.name in override:
        print(f"chexcut: note: {SHA256_ENV} overrides the expected sha256 of {arch.name} (test use only)",
              file=sys.stderr)
        return override[arch.name].strip().lower()
    return library_of(arch).known_sha256(arch)


def status(arch) -> dict:
    """One row of ``chexcut weights list``."""
    meta = library_of(arch).weights_meta(arch)
    found = library_of(arch).cached_file(arch)
    row = {"arch": arch.name, "weights": meta["id"], "license": meta["license"], "file": mirror_name(arch),
           "url": meta["url"],
           "size_mb": library_of(arch).size_mb(arch), "cached": found is not None, "path": str(found) if found else None,
           "place_at": str(library_of(arch).place_path(arch)), "verified": None}
    if found is not None:
        row["verified"] = verify_hash(arch, Path(found), raise_=False)
    return row


def verify_hash(arch, path: Path, raise_: bool = True, url: str | None = None) -> bool | None:
    """Whether ``path``'s sha256 matches what is known (None when nothing is known, e.g. a timm file
    outside the hub cache)."""
    want = expected_sha256(arch) or library_of(arch).blob_sha256(arch, path)
    if not want:
        return None
    got = sha256_file(path)
    ok = got.startswith(want)
    if not ok and raise_:
        raise ChexcutError(f"{url or path}: sha256 {got[:12]}... does not match the expected {want[:12]}...: "
                           f"not the {arch.name} ImageNet weights (refused and deleted)")
    return ok


def _check_loadable(arch, path: Path, url: str) -> None:
    """The tensors must fit the library's architecture, strictly (a hash alone can be unknown)."""
    import torch

    from chexcut.models.tensors import normalise_state_dict, read_state_dict

    try:
        state = read_state_dict(path)
    except ChexcutError as e:
        raise ChexcutError(f"{url}: not a weights file ({e})") from None
    with torch.device("meta"):
        model = library_of(arch).build(arch)
    own = model.state_dict()
    state = normalise_state_dict(state, arch)
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        raise ChexcutError(f"{url}: its tensors do not fit {arch.name} (refused and deleted)")
    if looks_untrained(state):
        raise ChexcutError(f"{url}: its tensors fit {arch.name} but look randomly initialised (every BatchNorm's "
                           f"running mean is 0 and variance 1, as in a model never trained): refused and deleted")


def looks_untrained(state: dict) -> bool:
    """Normalisation that never moved: BatchNorm running statistics of exactly 0 means and 1 variances in every
    layer, or, in a model without BatchNorm (ViT, Swin, ConvNeXt: LayerNorm), every norm's scale exactly 1 and
    shift exactly 0 (a trained model's are data-dependent). Where there is no published hash this tells a fresh
    model's tensors from trained weights of the right shapes."""
    import torch

    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    if not means and not variances:  # LayerNorms: scale ("norm*.weight") and shift, 1-D
        def norm_tensors(suffix: str) -> list:  # 1-D tensors of a module whose name says norm (norm1, fc_norm, ...)
            return [v for k, v in state.items() if k.endswith(suffix) and v.ndim == 1
                    and "norm" in (k.split(".")[-2] if "." in k else "")]

        scales, shifts = norm_tensors(".weight"), norm_tensors(".bias")
        return bool(scales) and all(torch.all(w == 1) for w in scales) and all(torch.all(b == 0) for b in shifts)
    if not means or not variances:
        return False
    return all(torch.all(m == 0) for m in means) and all(torch.all(v == 1) for v in variances)


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html") or head.startswith(b"<?xml")


def download(url: str, dest: Path, size_hint: int | None = None, progress=None) -> Path:
    """``url`` (http(s) or a local path) to ``dest.part``, resuming a previous partial download.

    Returns the .part path; raises ChexcutError (the .part file removed) on HTTP errors and short reads."""
    import urllib.error
    import urllib.request

    part = dest.with_name(f".{dest.name}.part")
    if "://" not in url or url.startswith("file://"):
        src = Path(url.removeprefix("file://"))
        if not src.is_file():
            raise ChexcutError(f"{src}: not in the mirror folder")
        shutil.copyfile(src, part)
        return part
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            resumed = have and r.status == 206
            total = r.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total is not None else size_hint
            if "text/html" in (r.headers.get("Content-Type") or ""):
                raise ChexcutError(f"{url}: the server sent an HTML page, not a weights file")
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as f:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        raise ChexcutError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:  # keep the .part: the next fetch resumes it
        reason = getattr(e, "reason", None) or e
        raise ChexcutError(f"{url}: download failed ({reason}); run the same command again to resume") from None
    except ChexcutError:
        part.unlink(missing_ok=True)
        raise
    if total is not None and done != total:
        part.unlink(missing_ok=True)
        raise ChexcutError(f"{url}: truncated download ({done:,} of {total:,} bytes; refused and deleted)")
    return part


def _mirror_url(mirror: str, arch) -> str:
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + mirror_name(arch)
    return str(Path(mirror) / mirror_name(arch))


def fetch(arch, mirror: str | None = None, to: Path | None = None, progress=None) -> dict:
    """Get the arch's ImageNet weights into the library's cache (or into folder ``to``: a mirror).

    From ``mirror`` (a folder or URL) when given, else from the network through the library's own client.
    A file already in place and verified is kept."""
    lib = library_of(arch)
    if to is None and mirror is None and lib.cached_file(arch) is not None:
        return {"arch": arch.name, "path": str(lib.cached_file(arch)), "action": "cached"}
    if to is None and mirror is None:
        if not host_resolves(lib.weights_meta(arch)["url"]):
            raise ChexcutError(f"no network to download {lib.weights_meta(arch)['url']}: {offline_advice(arch)}")
        path = lib.download(arch, progress)
        return {"arch": arch.name, "path": str(path), "action": "downloaded"}
    if mirror is not None:
        url = _mirror_url(mirror, arch)
    else:  # staging a mirror folder from the network: the original URL
        url = lib.weights_meta(arch)["url"]
    dest = (writable_folder(Path(to), "mirror folder") / mirror_name(arch)) if to is not None else \
        writable_folder(lib.place_path(arch).parent, "weights cache folder") / mirror_name(arch)
    part = download(url, dest, progress=progress)
    try:
        if _looks_like_html(part):
            raise ChexcutError(f"{url}: the server sent an HTML page, not a weights file (refused and deleted)")
        verify_hash(arch, part, url=url)
        _check_loadable(arch, part, url)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if to is not None:
        os.replace(part, dest)
        return {"arch": arch.name, "path": str(dest), "action": "staged", "url": url}
    path = lib.install(arch, part)
    return {"arch": arch.name, "path": str(path), "action": "installed", "url": url}


def offline_advice(arch) -> str:
    """What to do when the weights are not there and there is no network: one sentence."""
    return (f"expected at {library_of(arch).place_path(arch)}; on a machine with network run `chexcut weights fetch "
            f"{arch.name}` (or `chexcut weights fetch {arch.name} --to DIR` to stage a mirror folder, then "
            f"`--mirror DIR` / {MIRROR_ENV}=DIR here), or pass --weights PATH to a local copy")



def ensure_available(arch) -> None:
    """Before loading ImageNet weights: fetch them from the configured mirror, or say there is no network
    (the hub clients otherwise retry for a minute before giving up)."""
    lib = library_of(arch)
    if lib.is_cached(arch):
        return
    if os.environ.get(MIRROR_ENV):
        fetch(arch, mirror=os.environ[MIRROR_ENV])
        return
    url = lib.weights_meta(arch)["url"]
    if not host_resolves(url):
        raise ChexcutError(f"ImageNet weights for {arch.name} ({url}) are not cached and there is no network: "
                           f"{offline_advice(arch)}")
