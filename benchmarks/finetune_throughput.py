"""Training and inference throughput, measured in one run on one device.

    python benchmarks/finetune_throughput.py --arch densenet121 --image-size 320          # GPU
    python benchmarks/finetune_throughput.py --arch resnet18 --image-size 64 --quick      # CPU smoke run

(a) model-only training throughput on synthetic uint8 tensors, with chexcut's settings
    (fast recipe: bf16 autocast, channels_last, torch.compile on GPU; normalised on the device);
(b) chexcut's end-to-end `finetune` (the library call the CLI makes) on phantom data from the
    prepared uint8 cache, median images/s over its log intervals after warm-up;
(c) a naive paper-era loop: fp32, batch 16, per-image PIL decode + resize + normalise in a plain
    torchvision-style Dataset and DataLoader;
(d) model-only inference on synthetic tensors, and (e) chexcut's inference (`evaluate`'s predict)
    over the cache. Prints the figures and the ratios b/a (target >= 0.9 on GPU), b/c (>= 6) and e/d (>= 0.9).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_train(model, spec, device, batch, size, steps, warmup, precision, channels_last, compile_,
                    sync_per_step=False):
    from chexcut.models.infer import autocast
    from chexcut.training.loop import masked_bce

    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x8 = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=device)
    y = (torch.rand(batch, len(spec.labels), device=device) < 0.3).float()
    m = torch.ones_like(y)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t = time.perf_counter()
        x = spec.preprocess.normalise(x8, channels_last)
        with autocast(device, precision):
            loss = masked_bce(fwd(x), y, m)
        if sync_per_step:  # what finetune does each step: a finiteness check and the loss as a float
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return batch * steps / (time.perf_counter() - t)


@torch.no_grad()
def synthetic_infer(model, spec, device, batch, size, steps, precision, channels_last):
    from chexcut.models.infer import autocast

    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x8 = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=device)
    for i in range(3 + steps):
        if i == 3:
            sync(device)
            t = time.perf_counter()
        with autocast(device, precision):
            torch.sigmoid(model(spec.preprocess.normalise(x8, channels_last)).float()).cpu()
    sync(device)
    return batch * steps / (time.perf_counter() - t)


class NaiveDataset(torch.utils.data.Dataset):
    """The paper-era way: open each JPEG with PIL, resize, to float tensor, normalise, per image."""

    def __init__(self, files, targets, size):
        self.files, self.targets, self.size = files, targets, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.open(self.files[i]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        return x, torch.from_numpy(self.targets[i])


def naive_train(model, device, table, size, steps, workers):
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    ds = NaiveDataset(table.files, table.targets, size)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=workers, drop_last=True)
    n, t = 0, None
    it = iter(loader)
    for i in range(steps + 3):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if i == 3:
            sync(device)
            t = time.perf_counter()
        x, y = x.to(device), y.to(device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            n += len(x)
    sync(device)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 256 on GPU, 32 on CPU]")
    ap.add_argument("--images", type=int, default=None, help="phantom images [default: 3000 GPU, 300 CPU]")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    ap.add_argument("--only-infer", action="store_true", help="measure (d) and (e) only")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    a = ap.parse_args()

    import chexcut
    from chexcut.data.cache import prepare_cache
    from chexcut.data.phantom import make_phantom
    from chexcut.data.tables import DataOptions, load_split
    from chexcut.models.infer import default_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    batch = a.batch_size or (256 if gpu else 32)
    n_images = a.images or (3000 if gpu else 300)
    steps = a.steps or (40 if gpu else 6)
    compile_ = gpu if a.compile is None else a.compile
    precision = default_precision(device)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {a.arch} at {a.image_size}px, batch {batch}, {precision}, "
          f"channels_last={gpu}, compile={compile_}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="chexcut-ft-"))
    t = time.perf_counter()
    make_phantom(tmp / "data", n=n_images, image_size=max(a.image_size, 64), seed=0, lateral_frac=0.0)
    opts = DataOptions()
    tr, va = load_split(tmp / "data", "train", opts), load_split(tmp / "data", "valid", opts)
    prepare_cache(tr.files + va.files, a.image_size, folder=tmp / "cache")
    print(f"(phantom {n_images} images + cache in {time.perf_counter() - t:.0f} s)", flush=True)

    results = {"device": name, "arch": a.arch, "image_size": a.image_size, "batch_size": batch,
               "precision": precision, "compile": compile_}
    model = chexcut.truncate(a.arch, weights="none")
    spec = model.chexcut_spec
    if not a.only_infer:
        train_figures(a, results, model, spec, device, batch, steps, precision, gpu, compile_, tr, opts, tmp)
    infer_figures(a, results, spec, device, batch, steps, precision, gpu, tr, va, tmp)
    if "a_synthetic_train" in results:
        results["b_over_a"] = results["b_chexcut_finetune"] / results["a_synthetic_train"]
        results["b_over_c"] = results["b_chexcut_finetune"] / results["c_naive_paper_loop"]
        print(f"ratios: b/a = {results['b_over_a']:.2f} (target >= 0.9 on GPU), b/c = {results['b_over_c']:.1f}x "
              f"(target >= 6 on GPU)")
    results["e_over_d"] = results["e_chexcut_infer"] / results["d_synthetic_infer"]
    print(f"ratio: e/d = {results['e_over_d']:.2f} (target >= 0.9 on GPU)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


def train_figures(a, results, model, spec, device, batch, steps, precision, gpu, compile_, tr, opts, tmp):
    import chexcut
    from chexcut import events
    from chexcut.training.config import Run, TrainConfig
    from chexcut.training.loop import finetune

    results["a_synthetic_train"] = synthetic_train(model, spec, device, batch, a.image_size, steps, 5 if compile_ else 3,
                                                   precision, gpu, compile_)
    print(f"(a) model-only training, synthetic:        {results['a_synthetic_train']:9.1f} img/s", flush=True)
    results["a_sync_per_step"] = synthetic_train(model, spec, device, batch, a.image_size, steps, 3, precision, gpu,
                                                 compile_, sync_per_step=True)
    print(f"(a') the same + finetune's per-step sync (isfinite, float(loss)): {results['a_sync_per_step']:9.1f} img/s "
          f"({results['a_sync_per_step'] / results['a_synthetic_train']:.3f} of (a))", flush=True)

    steps_per_epoch = len(tr) // batch
    log_every = max(1, min(10, steps_per_epoch // 2))
    epochs = max(2, -(-(steps + 2 * log_every) // max(1, steps_per_epoch)))
    cfg = TrainConfig.from_recipe("fast", image_size=a.image_size, batch_size=batch, epochs=epochs,
                                  val_every=10**9, workers=a.workers, log_every=log_every, compile=compile_,
                                  channels_last=gpu, precision=precision, max_steps=steps + 2 * log_every)
    rows = []
    finetune(Run(tmp / "run", tmp / "data", opts, cfg, {"arch": a.arch, "weights": "none"}, cache=tmp / "cache"),
             emit=lambda e: rows.append(e.row) if isinstance(e, events.Log) else None)
    rates = [r["images_per_s"] for r in rows[1:] if r["step"] % steps_per_epoch > log_every or len(rows) < 4]
    results["b_chexcut_finetune"] = statistics.median(rates or [rows[-1]["images_per_s"]])
    print(f"(b) chexcut finetune, end to end (cache):   {results['b_chexcut_finetune']:9.1f} img/s "
          f"(median of {len(rates)} log intervals)", flush=True)

    naive_steps = max(10, min(60, steps * 2))
    results["c_naive_paper_loop"] = naive_train(chexcut.truncate(a.arch, weights="none"), device, tr, a.image_size,
                                                naive_steps, a.workers)
    print(f"(c) naive paper-era loop (fp32, bs16, PIL): {results['c_naive_paper_loop']:9.1f} img/s", flush=True)


def infer_figures(a, results, spec, device, batch, steps, precision, gpu, tr, va, tmp):
    """(d) vs (e) over the same number of images: 4 passes over the training split after one warm-up
    pass (which also meets the odd-sized last batch once, so cuDNN autotuning is not timed)."""
    import chexcut
    from chexcut.data.batches import XrayBatches, batch_order, make_loader
    from chexcut.data.cache import prepare_cache
    from chexcut.models.infer import predict

    results["d_synthetic_infer"] = synthetic_infer(chexcut.truncate(a.arch, weights="none"), spec, device, batch,
                                                   a.image_size, max(5, steps // 2), precision, gpu)
    infer_model = chexcut.truncate(a.arch, weights="none").to(device)
    if gpu:
        infer_model = infer_model.to(memory_format=torch.channels_last)
    cache, _ = prepare_cache(tr.files + va.files, a.image_size, folder=tmp / "cache")
    ds = XrayBatches(tr, a.image_size, cache=cache)
    one_pass = batch_order(len(ds), batch, False, 0, 0)
    predict(infer_model, spec, make_loader(ds, one_pass, a.workers, gpu), len(ds), device, precision, gpu)  # warm-up
    passes = 4
    loader = make_loader(ds, one_pass * passes, a.workers, pin=gpu)
    sync(device)
    t = time.perf_counter()
    predict(infer_model, spec, loader, len(ds) * passes, device, precision, gpu)
    sync(device)
    results["e_chexcut_infer"] = len(ds) * passes / (time.perf_counter() - t)
    print(f"(d) model-only inference, synthetic:       {results['d_synthetic_infer']:9.1f} img/s")
    print(f"(e) chexcut inference (predict, cache):    {results['e_chexcut_infer']:9.1f} img/s")


if __name__ == "__main__":
    main()
