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


NAME_MAX = 255  # bytes of one file or folder name on Linux and macOS file systems


def check_name_lengths(path, what: str) -> None:
    """Each name along ``path`` within what a file system holds (a 300-character name is one line, not an
    OSError from deep inside a writer)."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ChexcutError(f"cannot write {what}: the name {part[:40]}... is longer than the file system allows "
                               f"({NAME_MAX} bytes)")


def check_output_folder(path: Path, what: str = "output folder") -> Path:
    """An output folder that exists or can be created, is a folder, and is writable: checked before any work."""
    path = Path(path)
    check_name_lengths(path, f"the {what}")
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


#: Paths that name the process's own streams (written in place through their descriptor, whatever they resolve
#: to): these names, and any path inside these descriptor folders.
_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}
_FD_FOLDERS = ("/dev/fd/", "/proc/self/fd/")
STREAM_PREFIXES = (*_STREAMS, *_FD_FOLDERS)


def output_target(path) -> tuple[Path, bool]:
    """The output-path rule of every command: (where to write, in place?). ``-`` is standard output; a path that
    names a stream (``/dev/stdout``, ``/dev/fd/N``) or is a character device, FIFO or socket is written in place,
    never renamed over; a symlink is followed and its final target replaced atomically (the link stays a link); anything else
    is itself replaced atomically. A symlink loop is one line."""
    import errno
    import stat

    if str(path) == "-":  # the one spelling of standard output, wherever a file is written
        return Path("/dev/stdout"), True
    path = Path(path)
    if str(path).startswith(STREAM_PREFIXES):
        return path, True
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ChexcutError(f"{path} is a symlink loop; give a file name") from None
        if e.errno == errno.ENAMETOOLONG:
            raise ChexcutError(f"cannot write {path.name[:40]}...: the name is longer than the file system "
                               f"allows") from None
        raise
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return path, True
    return (Path(os.path.realpath(path)) if path.is_symlink() else path), False


def check_output_file(path: Path, what: str = "output", force: bool = True, inputs=(), protected=()) -> Path:
    """An output file that can be written (an existing one only with ``force``), and none of the command's
    ``inputs`` (a result written over its own label file destroys it), under :func:`output_target`'s rule:
    checked before any work. ``protected``: folders the command reads as a whole (a data set's folder, with its
    label files, lists, metadata and images): an output may add a file there, never replace one."""
    path = Path(path)
    check_name_lengths(path, what)
    target, in_place = output_target(path)
    if in_place:
        return path
    for source in inputs:
        if source is not None and str(source) != "-" and same_file(target, source):
            raise ChexcutError(f"{what} {path} is one of this command's inputs; write it elsewhere")
    for folder in protected:
        root = Path(folder).resolve()
        if target.exists() and (root == target.resolve() or root in target.resolve().parents):
            raise ChexcutError(f"{what} {path} would replace a file of {folder}, which this command reads; write "
                               f"it elsewhere (a new file there is fine)")
    if target.is_dir():
        raise ChexcutError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise ChexcutError(f"{path} exists; pass --force to overwrite it")
    path = target
    parent = path.parent if str(path.parent) else Path(".")
    try:
        longest = os.pathconf(parent if parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    if len(path.name.encode()) > longest - 16:  # room for the temporary file's prefix and suffix
        raise ChexcutError(f"cannot write {what}: the file name {path.name[:40]}... is longer than the file system "
                           f"allows ({longest} bytes)")
    if not parent.is_dir():
        raise ChexcutError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ChexcutError(f"cannot write {what} {path}: folder {parent} is not writable")
    return path


def check_outputs(outputs, inputs=(), protected=()) -> None:
    """Every output file of one command (``(path, flag)`` pairs; None or ``-`` skipped) under
    :func:`check_output_file`'s rule, and no two of them naming one file: checked before any work."""
    streamed = [flag for path, flag in outputs if path is not None and str(path) == "-"]
    if len(streamed) > 1:
        raise ChexcutError(f"{' and '.join(streamed)} would all write to standard output (-); send all but one to a file")
    given = [(Path(path), flag) for path, flag in outputs if path is not None and str(path) not in ("", "-")]
    for i, (path, flag) in enumerate(given):
        check_output_file(path, flag, inputs=inputs, protected=protected)
        for other, other_flag in given[:i]:
            if same_file(path, other):
                raise ChexcutError(f"{other_flag} and {flag} name one file ({path}); give each its own")


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds. Under the
    output-path rule (:func:`output_target`): a stream or device is yielded itself (written in place), a symlink's
    target is what is replaced."""
    path, in_place = output_target(path)
    if in_place:  # written whole after the block, appended through the stream (never truncating what it is)
        yield from _in_place(path)
        return
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


@contextlib.contextmanager
def atomic_folder(path: Path):
    """Yield an empty temporary folder beside ``path``; if the block succeeds it takes ``path``'s place (an existing
    folder there is moved aside first, then removed), else it is removed: a reader never sees half a folder."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    _writing.append(path)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the usual permissions
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _writing.pop()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _last_failed[:] = [path]
        _writing.pop()
        raise


def _in_place(path: Path):
    """The body of :func:`atomic_path` for a stream, device or FIFO: the writer writes a temporary file, whose
    bytes then go to ``path`` opened for appending (a shell's ``> file`` behind /dev/stdout is not truncated;
    what this process already printed is flushed first)."""
    import shutil
    import sys

    fd, tmp = tempfile.mkstemp(prefix="chexcut-out-", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        fd_number = _stream_fd(path)
        if fd_number is not None:  # the process's own stream: through its descriptor, at its offset
            with open(tmp, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 16), b""):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd_number, view):]
        else:
            with open(tmp, "rb") as src, open(path, "ab") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _stream_fd(path: Path) -> int | None:
    """The descriptor ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` or ``/proc/self/fd/N`` names (else None)."""
    text = str(path)
    if text in _STREAMS:
        return _STREAMS[text]
    for prefix in _FD_FOLDERS:
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


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


def finite(obj):
    """``obj`` with every NaN or infinite float as None: every JSON chexcut writes is JSON (``NaN`` is not), e.g.
    when a run file read back held a NaN."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj) -> str:
    """The one JSON rendering of chexcut's outputs (files and stdout): indented, non-finite numbers as null."""
    return json.dumps(finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: Path, obj) -> None:
    write_text(path, json_text(obj))


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
