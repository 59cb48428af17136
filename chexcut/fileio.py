"""Writing files safely: a crash never leaves half a file under the real name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from chexcut.errors import ChexcutError


def check_writable(path: Path, force: bool = False, inputs=()) -> None:
    """Refuse an existing output without ``force``, an output folder that cannot be written, and an input."""
    check_output_file(path, "output", force=force, inputs=inputs)


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


def same_file(a, b) -> bool:
    """Whether two paths name one file (symlinks and relative paths followed)."""
    try:
        if Path(a).exists() and Path(b).exists():
            return os.path.samefile(a, b)
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_output_file(path: Path, what: str = "output", force: bool = True, inputs=()) -> Path:
    """An output file that can be written (an existing one only with ``force``), and none of the command's
    ``inputs`` (a result written over its own label file destroys it): checked before any work."""
    path = Path(path)
    for source in inputs:
        if source is not None and str(source) != "-" and same_file(path, source):
            raise ChexcutError(f"{what} {path} is one of this command's inputs; write it elsewhere")
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
    _writing.append(path)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
        _writing.pop()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _last_failed[:] = [path]  # for the error message: which file a full disk cut short
        _writing.pop()
        raise


_writing: list[Path] = []
_last_failed: list[Path] = []


def forget_failed_writes() -> None:
    """Start a new command with no failed write on record."""
    _last_failed.clear()


def last_failed_write() -> Path | None:
    """The file whose atomic write failed last in this process (None if none did)."""
    return _last_failed[0] if _last_failed else None


def regular_file(path):
    """``path`` as a regular file: a pipe (process substitution ``<(...)``, ``/dev/fd/63``, a FIFO) is read once
    into a temporary file, removed at exit, since its CSV is read more than once. Other paths pass unchanged."""
    import atexit
    import shutil
    import stat

    if path is None or str(path) == "-":
        return path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return path
    fd, tmp = tempfile.mkstemp(prefix="chexcut-", suffix="-" + Path(path).name + ".csv")
    with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst)
    atexit.register(lambda: Path(tmp).unlink(missing_ok=True))
    return Path(tmp)


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


def csv_header(path) -> list[str]:
    """A CSV's column names as spreadsheets save them: a UTF-8 BOM dropped, spaces around each name stripped."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def read_csv(path, *, text=(), usecols=None, **kwargs):
    """``pandas.read_csv`` for every CSV a user gives (data, predictions, truth, groups, thresholds, readers): a
    UTF-8 BOM, CRLF line ends and spaces around column names are tolerated; columns are named as
    :func:`csv_header` names them; ``text``: columns read as strings (``True``: all of them)."""
    import csv

    import pandas as pd

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        raw = next(csv.reader(f), [])
    real = {c.strip(): c for c in raw}
    dtype = str if text is True else ({real.get(c, c): str for c in text} or None)
    use = None if usecols is None else [real.get(c, c) for c in usecols]
    df = pd.read_csv(path, encoding="utf-8-sig", dtype=dtype, usecols=use, **kwargs)
    df.columns = [str(c).strip() for c in df.columns]
    return df
