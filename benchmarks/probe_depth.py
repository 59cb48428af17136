"""What the depth curve of `chexcut probe` costs for a 12-block ViT, measured in one run on phantom data:

1. one forward pass of the whole model over the training and evaluation images (`chexcut.models.infer.predict`,
   the evaluation's loader): the reference;
2. the probe's depth curve with no cached features: feature extraction (one forward pass that stores every block's
   pooled features) plus every block's fits (C chosen on the grid, then the refit), as `run_probe` times them;
3. fine-tuning each truncation (keep 1..12), estimated: a few training steps of each truncated model (Adam, masked
   BCE, batch 16, random input of the probe's size, after one warm-up step) timed, scaled to the paper recipe's
   3 epochs over the same training rows. Data loading and validation are left out, so the estimate is low and the
   ratio to it conservative.

    python benchmarks/probe_depth.py [--n 600] [--image-size 112] [--arch vit_tiny_patch16_224]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from chexcut.data.batches import XrayBatches, batch_order, make_loader  # noqa: E402
from chexcut.data.phantom import make_phantom  # noqa: E402
from chexcut.data.tables import DataOptions, load_split  # noqa: E402
from chexcut.evaluation.probe import ProbeInputs, run_probe  # noqa: E402
from chexcut.evaluation.settings import Inference, Statistics  # noqa: E402
from chexcut.models.infer import predict  # noqa: E402
from chexcut.models.source import ModelSource  # noqa: E402
from chexcut.models.surgery import truncate  # noqa: E402

BATCH, EPOCHS, STEPS = 16, 3, 2  # the paper recipe's batch and epochs; steps timed per truncation


def forward_pass(arch: str, size: int, tables, batch: int) -> float:
    """Seconds for one forward pass of the whole model (head included) over the tables' images."""
    model = truncate(arch, weights="none", image_size=size).eval()
    spec = model.chexcut_spec
    t = time.perf_counter()
    for table in tables:
        ds = XrayBatches(table, size, "squash")
        loader = make_loader(ds, batch_order(len(ds), batch, False, 0, 0), 0, pin=False)
        predict(model, spec, loader, len(ds), torch.device("cpu"))
    return time.perf_counter() - t


def finetune_estimate(arch: str, size: int, keep: int, train_rows: int) -> float:
    """Seconds to fine-tune the model truncated to ``keep`` blocks for the recipe's epochs (timed steps, scaled)."""
    model = truncate(arch, keep=keep, weights="none", image_size=size).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(BATCH, 3, size, size), torch.randint(0, 2, (BATCH, 14)).float()

    def step():
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(STEPS):
        step()
    per_step = (time.perf_counter() - t) / STEPS
    return per_step * EPOCHS * math.ceil(train_rows / BATCH)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--arch", default="vit_tiny_patch16_224")
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "phantom"
        make_phantom(data, n=a.n, image_size=a.image_size, seed=0)
        tables = [load_split(data, "train"), load_split(data, "valid")]
        forward_s = forward_pass(a.arch, a.image_size, tables, 64)
        inputs = ProbeInputs(source=ModelSource.parse(a.arch, weights="none"), model=a.arch, data=data,
                             out=Path(tmp) / "probe", opts=DataOptions())
        res = run_probe(inputs, Statistics(bootstrap=0, calibration=False),
                        Inference(image_size=a.image_size, device="cpu", workers=0))
        tm = res["timings"]
        curve = tm["features_s"] + tm["fits_s"]
        blocks = res["model"]["keep"]
        finetune = [finetune_estimate(a.arch, a.image_size, k, len(tables[0])) for k in range(1, blocks + 1)]
    print(f"{a.arch} ({blocks} blocks), {a.image_size} px, phantom data: {len(tables[0])} training + "
          f"{len(tables[1])} evaluation images, {torch.get_num_threads()} CPU threads")
    print(f"one forward pass over these images:   {forward_s:7.2f} s")
    print(f"depth curve: features                 {tm['features_s']:7.2f} s")
    print(f"depth curve: fits ({blocks} blocks x 14 labels x {len(res['settings']['C_grid'])} C + refit) "
          f"{tm['fits_s']:7.2f} s")
    print(f"depth curve / one forward pass:       {curve / forward_s:7.2f}x (target <= 1.3x)")
    print(f"fine-tuning each truncation (est.):   {sum(finetune):7.1f} s "
          f"({EPOCHS} epochs x {math.ceil(len(tables[0]) / BATCH)} steps of batch {BATCH}, from {STEPS} timed steps each)")
    print(f"depth curve / fine-tuning each truncation: {curve / sum(finetune):.4f}x "
          f"(1 / {sum(finetune) / curve:.0f})")


if __name__ == "__main__":
    main()
