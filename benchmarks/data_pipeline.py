"""Data pipeline speed, measured in one run (targets: CSV < 1 s; cache >= 20,000 img/s and >= 10x decode).

    python benchmarks/data_pipeline.py [--rows 224000] [--images 2000] [--image-size 320]

1. Parse a generated 224,000-row CheXpert-format train.csv and apply the label policies.
2. Read batches of 64 from the prepared uint8 cache at 320 px (XrayBatches, as training does).
3. The per-image path: decode + resize each CheXpert-size JPEG with PIL (XrayBatches without a cache).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    import pandas as pd

    from chexcut.data.phantom import HEADER
    from chexcut.labels import CHEXPERT_LABELS

    rng = np.random.default_rng(seed)
    choices = np.array(["1.0", "0.0", "-1.0", ""], dtype=object)
    labels = choices[rng.choice(4, size=(rows, len(CHEXPERT_LABELS)), p=[0.15, 0.25, 0.05, 0.55])]
    pid = rng.integers(1, 64540, rows)
    df = pd.DataFrame(labels, columns=list(CHEXPERT_LABELS))
    df.insert(0, "Path", [f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg" for p in pid])
    df.insert(1, "Sex", "Male")
    df.insert(2, "Age", 60)
    df.insert(3, "Frontal/Lateral", np.where(rng.random(rows) < 0.85, "Frontal", "Lateral"))
    df.insert(4, "AP/PA", "AP")
    assert list(df.columns) == HEADER
    df.to_csv(path, index=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=224_000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from chexcut.data.batches import XrayBatches, batch_order
    from chexcut.data.cache import prepare_cache
    from chexcut.data.phantom import make_phantom
    from chexcut.data.tables import DataOptions, load_split

    tmp = Path(tempfile.mkdtemp(prefix="chexcut-bench-"))
    big = tmp / "big" / "CheXpert-v1.0-small"
    big.mkdir(parents=True)
    make_csv(big / "train.csv", args.rows)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        table = load_split(big.parent, "all", DataOptions(uncertain="Atelectasis=ones,Edema=ones,default=zeros",
                                                          blank="ignore", views="frontal"))
        times.append(time.perf_counter() - t)
    print(f"CSV parse + policies, {args.rows:,} rows -> {len(table):,} frontal: {min(times):.3f} s (target < 1 s)")

    # CheXpert-size JPEGs (~390 x 320, like CheXpert-v1.0-small) from the phantom generator
    t = time.perf_counter()
    make_phantom(tmp / "ph", n=args.images, image_size=390, seed=0, lateral_frac=0.0)
    print(f"(generated {args.images} phantom JPEGs in {time.perf_counter() - t:.1f} s)")
    table = load_split(tmp / "ph", "all", DataOptions(views="all"))
    t = time.perf_counter()
    cache, _ = prepare_cache(table.files, args.image_size, folder=tmp / "cache")
    prep = time.perf_counter() - t
    print(f"prepare: {len(table)} images decoded into the cache in {prep:.2f} s = {len(table) / prep:,.0f} img/s "
          f"(all cores)")

    cached = XrayBatches(table, args.image_size, cache=cache)
    batches = batch_order(len(table), args.batch_size, True, 0, 0)
    n = 0
    t = time.perf_counter()
    for rep in range(5):
        for b in batch_order(len(table), args.batch_size, True, 0, rep):
            x = cached[b][0]
            n += len(b)
    cache_rate = n / (time.perf_counter() - t)
    from chexcut.data.batches import CachedBatchLoader

    n = 0
    t = time.perf_counter()
    for rep in range(5):
        for x, *_ in CachedBatchLoader(cached, batch_order(len(table), args.batch_size, True, 0, rep), threads=2):
            n += len(x)
    threaded_rate = n / (time.perf_counter() - t)
    decode = XrayBatches(table, args.image_size)
    n = 0
    t = time.perf_counter()
    for b in batches[: max(1, 640 // args.batch_size)]:
        x = decode[b][0]
        n += len(b)
    decode_rate = n / (time.perf_counter() - t)
    assert x.shape[-1] == args.image_size
    print(f"read from cache, {args.image_size}px, batch {args.batch_size}, one process: {cache_rate:,.0f} img/s "
          f"(target >= 20,000)")
    print(f"read from cache, CachedBatchLoader (2 threads):   {threaded_rate:,.0f} img/s (what finetune/evaluate use)")
    print(f"per-image JPEG decode + resize, one process:       {decode_rate:,.0f} img/s")
    print(f"ratio cache / decode: {cache_rate / decode_rate:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
