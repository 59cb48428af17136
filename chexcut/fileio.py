"""Writing files safely: a crash never leaves half a file under the real name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from chexcut.errors import ChexcutError


def check_writable(path: Path, force: bool = False) -> None:
    """Refuse an existing output without ``force`` and an output folder that cannot be written."""
    check_output_file(path, "output", force=force)


def check_output_folder(path: Path, what: str = "output folder") -> Path:
    """An output folder that exists or can be created, is a folder, and is writable: checked before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ChexcutError(f"the {what} {path} is a file; give a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ChexcutError(f"cannot create the {what} {path}: {probe} is a file")
    if not os.access(probe, os.W_OK):
        raise ChexcutError(f"cannot write the {what} {path}: {probe} is not writable")
    return path


def check_output_file(path: Path, what: str = "output", force: bool = True) -> Path:
    """An output file that can be written (an existing one only with ``force``): checked before any work."""
    path = Path(path)
    if path.is_dir():
        raise ChexcutError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise ChexcutError(f"{path} exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ChexcutError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ChexcutError(f"cannot write {what} {path}: folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: Path) -> str:
    """The file's sha256, hex."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def cache_dir() -> Path:
    """chexcut's cache folder: $CHEXCUT_CACHE, else $XDG_CACHE_HOME/chexcut, else ~/.cache/chexcut."""
    if os.environ.get("CHEXCUT_CACHE"):
        p = Path(os.environ["CHEXCUT_CACHE"])
        if p.exists() and not p.is_dir():
            raise ChexcutError(f"CHEXCUT_CACHE={p} is a file; point it at a folder")
        return p
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chexcut"


def writable_folder(folder: Path, what: str) -> Path:
    """``folder``, created, after :func:`chexcut.fileio.check_output_folder` (one line when it cannot be)."""
    try:
        check_output_folder(folder, what)
    except ChexcutError as e:
        raise ChexcutError(f"{e} (fix it, or point TORCH_HOME / HF_HOME / CHEXCUT_CACHE elsewhere)") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChexcutError(f"cannot create the {what} {folder}: {e.strerror}") from None
    return folder
