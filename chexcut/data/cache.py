"""The prepared image cache: every selected image decoded and resized once, into one uint8 memmap.

Layout of a cache folder (``cache_dir()/images/<key>/`` by default, ``--cache DIR`` to choose)::

    images.u8     N x S x S uint8, row i = image i of index.json's "paths"
    done.u8       N bytes, 1 = row written (resume after an interruption)
    index.json    {"key", "image_size", "resize", "paths", "fingerprint", "complete"}

The key hashes the image size, the resize mode and the sorted list of files with their sizes and
mtimes, so a cache built for other settings or older files is never found, never misused.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError
from chexcut.fileio import cache_dir, check_output_folder, write_json
from chexcut.reading import read_json

FORMAT = 1


def fingerprint(files: list[Path]) -> str:
    """sha256 over (path, size, mtime) of every file, in the given order."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(files: list[Path], image_size: int, resize: str) -> tuple[str, list[str], str]:
    ordered = sorted({str(f) for f in files})
    fp = fingerprint([Path(p) for p in ordered])
    key = hashlib.sha256(f"v{FORMAT}|{image_size}|{resize}|{fp}".encode()).hexdigest()[:24]
    return key, ordered, fp


@dataclass
class ImageCache:
    folder: Path
    image_size: int
    resize: str
    paths: list[str]
    images: np.ndarray  # memmap (N, S, S) uint8
    row_of: dict[str, int]
    bad: tuple[str, ...] = ()  # unreadable when prepared with --skip-bad: stored black

    def rows(self, files: list[Path]) -> np.ndarray:
        try:
            return np.array([self.row_of[str(f)] for f in files], dtype=np.int64)
        except KeyError as e:
            raise ChexcutError(f"the image cache {self.folder} does not hold {e.args[0]}; rerun `chexcut prepare`") from None


def default_folder(key: str) -> Path:
    return cache_dir() / "images" / key


def dataset_cache(data, opts, files: list, image_size: int, resize: str,
                  folder: Path | None = None) -> ImageCache | None:
    """:func:`open_cache` for some rows (``files``) of the data set ``data`` read with ``opts``: ``chexcut prepare``
    caches the whole set (train + valid), so the default location is found by the whole set's files, when they can
    be read."""
    from chexcut.data.tables import load_split

    try:
        key_files = load_split(data, "all", opts).files
    except ChexcutError:
        key_files = None
    return open_cache(files, image_size, resize, folder, key_files=key_files)


def open_cache(files: list, image_size: int, resize: str, folder: Path | None = None,
               refuse_other: bool = True, key_files: list | None = None) -> ImageCache | None:
    """A complete cache holding ``files`` at these settings, or None.

    The default location is found by the key of ``key_files`` (default: ``files``; evaluate passes
    the whole dataset's files, which is what ``prepare`` caches, to read a split from it). A
    ``folder`` the user chose may hold a superset of ``files``: it is used when its settings match
    and none of its files changed since; otherwise it is refused (``refuse_other``), never
    silently used or overwritten.
    """
    key, ordered, fp = cache_key(key_files or files, image_size, resize)
    explicit = folder is not None
    folder = Path(folder) if explicit else default_folder(key)
    try:
        meta = read_json(folder / "index.json")
    except ChexcutError:
        return None
    damage = _index_damage(meta)
    if damage:  # a damaged index is named, never used (nor silently rebuilt over a folder the user chose)
        if explicit:
            raise ChexcutError(f"the image cache at {folder} is damaged ({damage}); run chexcut prepare into a new "
                               f"folder, or remove it")
        return None
    if not meta.get("complete"):
        return None
    if meta.get("key") != key:
        paths = meta.get("paths") or []
        held = set(paths)
        fresh = (meta.get("image_size") == image_size and meta.get("resize") == resize
                 and all(str(f) in held for f in files) and _fingerprint_or_none(paths) == meta.get("fingerprint"))
        if not fresh:
            if explicit and refuse_other:
                raise ChexcutError(f"the cache at {folder} was built for other settings or files; "
                                   f"remove it or choose another --cache folder")
            return None
        ordered = paths
    data, want = folder / "images.u8", len(ordered) * image_size * image_size
    have = data.stat().st_size if data.is_file() else None
    if have != want:  # an interrupted copy (rsync) or a damaged folder: never map past the end of the file
        raise ChexcutError(f"the image cache at {folder} is damaged: images.u8 holds {have or 0:,} bytes, its index "
                           f"needs {want:,} (an interrupted copy?); copy it again or run chexcut prepare into a new folder")
    images = np.memmap(data, dtype=np.uint8, mode="r", shape=(len(ordered), image_size, image_size))
    return ImageCache(folder, image_size, resize, ordered, images, {p: i for i, p in enumerate(ordered)},
                      tuple(meta.get("bad") or ()))


def _index_damage(meta) -> str | None:
    """What is wrong with an index.json's shape (None: nothing)."""
    if not isinstance(meta, dict):
        return "index.json is not an object"
    kinds = {"key": str, "image_size": int, "resize": str, "paths": list, "complete": bool}
    for name, kind in kinds.items():
        if name in meta and not isinstance(meta[name], kind):
            return f"index.json's {name!r} has the wrong type ({type(meta[name]).__name__})"
    if not all(isinstance(p, str) for p in meta.get("paths") or ()):
        return "index.json's paths are not all file names"
    return None


def _fingerprint_or_none(paths: list[str]) -> str | None:
    try:
        return fingerprint([Path(p) for p in paths])
    except OSError:
        return None


def _decode_chunk(args):
    from chexcut.data.images import load_image

    folder, n, size, resize, items, skip_bad = args
    images = np.memmap(Path(folder) / "images.u8", dtype=np.uint8, mode="r+", shape=(n, size, size))
    bad = []
    for row, path in items:
        try:
            images[row] = load_image(path, size, resize)
        except ChexcutError as e:
            if not skip_bad:
                return row, str(e), bad
            images[row] = 0
            bad.append(path)
    images.flush()
    del images
    return None, None, bad


def allocate(path: Path, nbytes: int) -> None:
    """Reserve ``nbytes`` of real disk blocks for ``path`` (idempotent; resumes keep what is written)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:  # no fallocate: write zeros past the end
            os.ftruncate(fd, nbytes)
    except OSError as e:
        need = nbytes - (os.fstat(fd).st_blocks * 512)
        raise ChexcutError(f"no room for the image cache in {path.parent}: it needs {nbytes / 2**20:.0f} MiB "
                           f"({max(need, 0) / 2**20:.0f} MiB more; {e.strerror}); free space, or choose another "
                           f"folder with --cache / CHEXCUT_CACHE, then run the same command again") from None
    finally:
        os.close(fd)


def _open_files(folder: Path, meta: dict, ordered: list[str], image_size: int) -> tuple[Path, Path]:
    """images.u8 and done.u8 of a cache being filled: kept when they belong to this key (a resumed fill),
    else started empty; the images' blocks reserved before mapping (a full disk is an error, not SIGBUS)."""
    index, n = folder / "index.json", meta["n"]
    images_path, done_path = folder / "images.u8", folder / "done.u8"
    try:
        old = read_json(index)
    except ChexcutError:
        old = {}
    old = old if isinstance(old, dict) else {}
    if old.get("key") != meta["key"] or not images_path.exists() or not done_path.exists():
        with open(images_path, "wb") as f:
            f.truncate(0)
        np.zeros(n, dtype=np.uint8).tofile(done_path)
        write_json(index, {**meta, "paths": ordered})
    allocate(images_path, n * image_size * image_size)
    return images_path, done_path


def prepare_cache(files: list[Path], image_size: int, resize: str = "squash", folder: Path | None = None,
                  workers: int | None = None, progress=None, skip_bad: bool = False,
                  chunk: int = 64) -> tuple[ImageCache, dict]:
    """Decode every file once into the cache (resuming a partial one); returns (cache, stats).

    ``progress(done, total)`` is called as chunks finish. A corrupt image stops with its name,
    unless ``skip_bad`` (then it is stored black and listed in ``stats["bad"]``).
    """
    key, ordered, fp = cache_key(files, image_size, resize)
    folder = Path(folder) if folder else default_folder(key)
    existing = open_cache(files, image_size, resize, folder, refuse_other=False)
    if existing is not None:
        return existing, {"decoded": 0, "reused": len(ordered), "bad": [], "folder": str(folder)}
    check_output_folder(folder, "image cache folder")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(ordered)
    index = folder / "index.json"
    meta = {"format": FORMAT, "key": key, "image_size": image_size, "resize": resize, "fingerprint": fp,
            "n": n, "complete": False}
    images_path, done_path = _open_files(folder, meta, ordered, image_size)
    done = np.fromfile(done_path, dtype=np.uint8)
    todo = np.flatnonzero(done == 0)
    stats = {"decoded": 0, "reused": int(n - len(todo)), "bad": [], "folder": str(folder)}
    if progress:
        progress(n - len(todo), n)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    from chexcut.data.cpus import allocated_cpus

    workers = max(1, workers if workers is not None else min(8, allocated_cpus()))
    done_mm = np.memmap(done_path, dtype=np.uint8, mode="r+", shape=(n,))

    def finish(rows, result):
        bad_row, msg, bad = result
        if bad_row is not None:
            raise ChexcutError(f"{msg} (--skip-bad stores it black and goes on)")
        done_mm[rows] = 1
        done_mm.flush()
        stats["decoded"] += len(rows)
        stats["bad"].extend(bad)
        if progress:
            progress(int(done_mm.sum()), n)

    jobs = [(str(folder), n, image_size, resize, [(int(r), ordered[r]) for r in rows], skip_bad) for rows in chunks]
    if workers == 1 or len(chunks) <= 1:
        for rows, job in zip(chunks, jobs):
            finish(rows, _decode_chunk(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rows, result in zip(chunks, pool.map(_decode_chunk, jobs)):
                finish(rows, result)
    write_json(index, {**meta, "paths": ordered, "complete": True, "bad": stats["bad"]})
    cache = open_cache(files, image_size, resize, folder)
    assert cache is not None
    return cache, stats
