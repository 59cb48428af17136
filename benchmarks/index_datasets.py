"""How long `chexcut datasets index` takes on the real published label tables, from the shell (target: each well
under 5 s on the 2-core dev machine): NIH ChestX-ray14 (112,120 rows) and PadChest (160,861 rows), as
torchxrayvision 1.5.7's wheel ships them.

    python benchmarks/index_datasets.py [--data DIR] [--repeat 3]

DIR is an unzipped torchxrayvision/data folder (default: the tests' cache, ~/.cache/chexcut-test/xrv-1.5.7/...,
fetched with `pip download --no-deps torchxrayvision==1.5.7` when absent). Prints the median wall time of the
whole command (interpreter start, reading, harmonising, the missing-image scan and writing the index CSV), the
in-process read alone, and rows per second, measured in this one run.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETS = {"nih": "Data_Entry_2017_v2020.csv.gz", "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"}


def data_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import pytest
    from test_datasets import _fetch_xrv

    try:
        return _fetch_xrv()
    except pytest.skip.Exception as e:
        sys.exit(f"cannot fetch the real tables: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    data = data_folder(a.data)
    tmp = Path(tempfile.mkdtemp())
    for name, f in SETS.items():
        folder = tmp / name
        folder.mkdir()
        (folder / f).symlink_to(data / f)
        times = []
        for i in range(a.repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "chexcut", "datasets", "index", f"{name}:{folder}", "-o",
                            str(tmp / f"{name}-{i}.csv"), "--json", "-"], check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        from chexcut.data import datasets

        reads = []
        for _ in range(a.repeat):
            datasets._INDEX_CACHE.clear()
            t = time.perf_counter()
            frame, _, _ = datasets.read_index(folder, name)
            reads.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{name:9s} {len(frame):>7,} rows: `chexcut datasets index` {med:.2f} s (median of {a.repeat}; "
              f"{len(frame) / med:,.0f} rows/s), read + harmonise in-process {statistics.median(reads):.2f} s")


if __name__ == "__main__":
    main()
