"""Reading what a user gives with bounded work: CSV tables (compressed or not) and JSON files.

Every CSV a user gives (label files, predictions, truth, groups, thresholds, readers) is read through
:func:`read_csv`, every JSON chexcut reads back (plans, run files, evaluations) through :func:`read_json`. The
bounds are one-line errors, never a machine out of memory:

- a line of a CSV longer than ``MAX_LINE_BYTES`` (1 MiB; the longest line of the published label tables is
  under 8 kB);
- a compressed CSV that expands past ``MAX_EXPANSION`` times its size on disk plus ``EXPANSION_FLOOR`` (the
  published tables expand 2 to 12 times; a "zip bomb" expands about 1,000 times), counted while it streams;
- a JSON file nested deeper than ``MAX_JSON_DEPTH`` levels (a plan is 5 deep) or larger than
  ``MAX_JSON_BYTES``;
- a header naming one column twice (which column holds the labels would be a guess).
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np

from chexcut.errors import ChexcutError

MAX_LINE_BYTES = 1 << 20
MAX_EXPANSION = 50
EXPANSION_FLOOR = 16 << 20
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 256 << 20


class _Bounded(io.RawIOBase):
    """A binary stream that stops with one line when a line or the whole decompressed text grows past its caps."""

    def __init__(self, raw, path, limit: int | None):
        self.raw, self.path, self.limit = raw, path, limit
        self.total = self.line = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if not n:
            return n
        self.total += n
        if self.limit is not None and self.total > self.limit:
            raise ChexcutError(f"{self.path}: decompresses to more than {self.limit:,} bytes ({MAX_EXPANSION} times "
                               f"its size plus {EXPANSION_FLOOR >> 20} MiB); a label table expands about 10 times")
        chunk = np.frombuffer(buffer, dtype=np.uint8, count=n)
        ends = np.flatnonzero((chunk == 10) | (chunk == 13))  # LF, CRLF and old Mac CR line ends
        if len(ends) == 0:
            self.line += n
            longest = self.line
        else:
            longest = self.line + int(ends[0])
            if len(ends) > 1:
                longest = max(longest, int(np.diff(ends).max()) - 1)
            self.line = n - int(ends[-1]) - 1
            longest = max(longest, self.line)
        if longest > MAX_LINE_BYTES:
            raise ChexcutError(f"{self.path}: a line longer than {MAX_LINE_BYTES >> 20} MiB; a label table's lines "
                               f"are a few hundred bytes (a damaged or hostile file)")
        return n

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.raw.seek(offset, whence)
        if position == 0:  # read again from the start (the header, then the table)
            self.total = self.line = 0
        return position

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        super().close()


def _expansion_limit(compressed_bytes: int) -> int:
    return MAX_EXPANSION * compressed_bytes + EXPANSION_FLOOR


def open_text(path):
    """A CSV as text, decompressed by its extension (.gz, .bz2, .xz, .zip with one member), a BOM dropped, its
    lines and decompressed size bounded while it streams."""
    name = str(path).lower()
    size = os.path.getsize(path)
    if name.endswith(".zip"):
        import zipfile

        try:
            z = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise ChexcutError(f"{path} is not a readable zip file ({e})") from None
        members = [m for m in z.infolist() if not m.filename.endswith("/")]
        if len(members) != 1:
            z.close()
            raise ChexcutError(f"{path}: a zipped CSV holds one file, this holds {len(members)}")
        raw, limit = z.open(members[0]), _expansion_limit(members[0].compress_size)
    elif name.endswith((".gz", ".bz2", ".xz")):
        import bz2
        import gzip
        import lzma

        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[name[name.rfind("."):]]
        raw, limit = opener(path, "rb"), _expansion_limit(size)
    else:
        raw, limit = open(path, "rb"), None
    stream = io.BufferedReader(_Bounded(raw, path, limit), buffer_size=1 << 18)
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")


def _header_line(path) -> tuple[list[str], str]:
    """(the header's column names as written, the separator), from one read of the first line: the separator is
    ',' unless the header splits better on ';' or a tab (a spreadsheet saved in a locale with decimal commas
    writes ';')."""
    import csv
    import lzma
    import zlib

    with open_text(path) as f:
        try:
            first = f.readline()
        except (lzma.LZMAError, zlib.error) as e:
            raise ChexcutError(f"{path} cannot be decompressed ({e})") from None
        counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
        best = max(counts, key=counts.get)
        sep = best if counts[best] > counts[","] else ","
        f.seek(0)  # the header as the csv module reads it (a quoted name may span lines)
        return next(csv.reader(f, delimiter=sep), []), sep


def csv_header(path) -> list[str]:
    """A CSV's column names as spreadsheets save them: compressed by extension, a UTF-8 BOM dropped, the separator
    sniffed, spaces around each name stripped."""
    try:
        return [c.strip() for c in _header_line(path)[0]]
    except (OSError, EOFError) as e:
        raise ChexcutError(f"{path} is not a readable CSV ({e})") from None


def read_csv(path, *, text=(), usecols=None, **kwargs):
    """``pandas.read_csv`` for every CSV a user gives (data, predictions, truth, groups, thresholds, readers): a
    UTF-8 BOM, CRLF line ends, spaces around column names, a ``.gz``/``.bz2``/``.xz``/``.zip`` file and a ``;``
    or tab separator (with decimal commas after ``;``) are read; columns are named as :func:`csv_header` names
    them; ``text``: columns read as strings (``True``: all of them). A header naming one column twice is refused
    (pandas would rename the second and a reader would silently take one of them)."""
    import pandas as pd

    raw, sep = _header_line(path)
    names = [c.strip() for c in raw]
    twice = sorted({c for c in names if c and names.count(c) > 1})
    if twice:
        raise ChexcutError(f"{path}: the header names {', '.join(map(repr, twice))} more than once; which column "
                           f"holds the values would be a guess")
    real = {c.strip(): c for c in raw}
    dtype = str if text is True else ({real.get(c, c): str for c in text} or None)
    use = None if usecols is None else [real.get(c, c) for c in usecols]
    if sep != ",":
        kwargs.setdefault("sep", sep)
        if sep == ";":
            kwargs.setdefault("decimal", ",")
    import lzma
    import zlib

    try:
        with open_text(path) as f:
            df = pd.read_csv(f, dtype=dtype, usecols=use, **kwargs)
    except (lzma.LZMAError, zlib.error, EOFError, OSError) as e:  # a damaged .xz, .bz2, .gz or .zip member
        if isinstance(e, FileNotFoundError):
            raise
        raise ChexcutError(f"{path} cannot be decompressed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)  # an unterminated string runs to the end: linear


def json_depth(text: str) -> int:
    """The deepest nesting of brackets in a JSON text, outside its strings (read before ``json.loads`` recurses)."""
    bare = np.frombuffer(_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.isin(bare, (91, 123)).astype(np.int64) - np.isin(bare, (93, 125)).astype(np.int64)
    return int(np.cumsum(steps).max()) if len(steps) else 0


def parse_json(text: str, what, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with its nesting bounded first (a 100,000-deep list would end in RecursionError)."""
    if json_depth(text) > max_depth:
        raise ChexcutError(f"{what}: nested deeper than {max_depth} levels (a damaged or hostile file)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ChexcutError(f"{what} is not valid JSON ({str(e).splitlines()[0] if str(e) else 'damaged'})") from None


def read_json(path, what: str | None = None):
    """A JSON file chexcut reads back (a plan, a run's files, an evaluation): size and nesting bounded, one line
    naming the file when it is missing, too large, too deep or not JSON. A BOM is dropped."""
    path = Path(path)
    what = what or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ChexcutError(f"{what}: {size:,} bytes is more than the {MAX_JSON_BYTES >> 20} MiB a chexcut JSON "
                               f"file can be")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ChexcutError(f"{what}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChexcutError(f"{what} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    return parse_json(text, what)


def parse_yaml(text: str, what, max_depth: int, alias_hint: str = "write each value out",
               depth_hint: str = ""):
    """``yaml`` text read safely (no objects) with bounded work: aliases refused (a "billion laughs" file expands
    a few lines of them into gigabytes) and nesting past ``max_depth`` refused, each one line naming ``what``.
    A malformed text raises ``yaml.YAMLError`` for the caller to word."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ChexcutError(f"{what}: YAML aliases (*{self.peek_event().anchor}) are not read; {alias_hint}")
            self.depth += 1
            if self.depth > max_depth:
                raise ChexcutError(f"{what}: the YAML nests more than {max_depth} levels deep{depth_hint}")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader: plain values only
