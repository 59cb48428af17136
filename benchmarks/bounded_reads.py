"""What reading a label table through chexcut's bounds costs: `chexcut.reading.read_csv` (streamed, every line and
the decompressed size counted) against `pandas.read_csv` on the same file, in one run.

    python benchmarks/bounded_reads.py [DATA_DIR]

DATA_DIR: torchxrayvision 1.5.7's `data/` folder (default: the tests' cache, ~/.cache/chexcut-test/xrv-1.5.7/
torchxrayvision/data); the published NIH and PadChest tables are read three times each, alternating, and the
medians and their ratio printed.
"""

import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chexcut.reading import read_csv  # noqa: E402

DEFAULT = Path.home() / ".cache" / "chexcut-test" / "xrv-1.5.7" / "torchxrayvision" / "data"
TABLES = {"NIH Data_Entry_2017_v2020.csv.gz": "Data_Entry_2017_v2020.csv.gz",
          "PadChest labels (160,861 rows)": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"}


def main():
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    for title, name in TABLES.items():
        path = folder / name
        if not path.is_file():
            print(f"{title}: {path} not found (run tests/test_datasets.py once, or pass DATA_DIR)")
            continue
        ours, theirs = [], []
        for _ in range(3):
            t = time.perf_counter()
            read_csv(path, text=True)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            pd.read_csv(path, dtype=str)
            theirs.append(time.perf_counter() - t)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{title}: chexcut {a:.2f} s, pandas {b:.2f} s, ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()
