"""Efficiency measured, not inferred: latency, throughput and memory per truncation level.

Every level is timed as a deployment runs it: uint8 grey images in, probabilities out
(:class:`chexcut.deploy.export.Deployable`: normalisation, model, sigmoid), in PyTorch or, with
``runtime="onnxruntime"``, the exported ONNX graph in ONNX Runtime. Timing uses
``torch.utils.benchmark.Timer.adaptive_autorange`` (warm-up, then blocks of runs until the median is
stable; CUDA is synchronised per block), reporting the median, p10 and p90 over blocks and their count.
Latency is at batch 1, throughput at the larger batch. Memory: CUDA's peak allocation, or on the CPU the
growth of the process's peak RSS while the level ran (0 when an earlier level already reached it).
"""

from __future__ import annotations

import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chexcut.errors import ChexcutError


def _stats(m) -> dict:
    t = np.asarray(m.times) * 1000.0  # seconds per run, one entry per timed block
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
            "repetitions": int(len(t))}


def _time(fn, device: torch.device, max_run_time: float) -> dict:
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" chatter
    from torch.utils.benchmark import Timer

    fn()  # warm-up (allocations, cudnn autotune, lazy init)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    m = Timer(stmt="fn()", globals={"fn": fn}).adaptive_autorange(threshold=0.05, min_run_time=0.2,
                                                                   max_run_time=max_run_time)
    return _stats(m)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_settings(device: str | None, precision: str, threads: int | None, runtime: str, compile_: bool,
                   batches: list[int]) -> torch.device:
    from chexcut.choices import Precision, check
    from chexcut.models.infer import pick_device, resolve_precision

    dev = pick_device(device)
    resolve_precision(check(Precision, precision, "--precision"), dev)
    if threads is not None and threads < 1:
        raise ChexcutError("--threads must be at least 1")
    if runtime not in ("torch", "onnxruntime"):
        raise ChexcutError(f"--runtime must be torch or onnxruntime, not {runtime!r}")
    if runtime == "onnxruntime" and (dev.type != "cpu" or precision not in ("fp32", "auto") or compile_):
        raise ChexcutError("--runtime onnxruntime times the exported fp32 graph on the CPU: use --device cpu, "
                           "--precision fp32 and no --compile")
    if not batches or any(b < 1 for b in batches):
        raise ChexcutError("--batch must be positive integers, e.g. 1,32")
    return dev


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: device, input size (None: the model's own), batch sizes (latency at the smallest,
    throughput at the largest), precision, memory format, compile, CPU threads, runtime, seconds per measurement."""

    device: str | None = None
    image_size: int | None = None
    batches: tuple[int, ...] = (1, 32)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None
    runtime: str = "torch"  # torch | onnxruntime
    max_run_time: float = 3.0

    def __post_init__(self):
        import math

        from chexcut.choices import check_bounds

        if not (isinstance(self.max_run_time, (int, float)) and math.isfinite(self.max_run_time)
                and 0.01 <= self.max_run_time <= 3600):  # 0 s measures for ever (adaptive_autorange never ends)
            raise ChexcutError(f"--max-time must be between 0.01 and 3,600 seconds, not {self.max_run_time}")
        for b in self.batches:
            check_bounds("batch_size", b, "--batch")
        check_bounds("threads", self.threads)
        check_bounds("image_size", self.image_size)


def bench_level(model, spec, device: torch.device, image_size: int, settings: BenchSettings) -> dict:
    """One truncation level: latency at the smallest batch, throughput at the largest, peak memory."""
    from chexcut.deploy.export import Deployable
    from chexcut.models.infer import autocast, resolve_precision

    batches, max_run_time, runtime = list(settings.batches), settings.max_run_time, settings.runtime
    precision = resolve_precision(settings.precision, device)
    dep = Deployable(model, spec).eval().to(device)
    if settings.channels_last:
        dep = dep.to(memory_format=torch.channels_last)
    run_fn = dep
    if runtime == "onnxruntime":
        from chexcut.deploy.export import export_onnx, ort_session
        from chexcut.models.modelfile import save_model

        with tempfile.TemporaryDirectory(prefix="chexcut-bench-") as folder:  # the session keeps the graph
            tmp = Path(folder)
            save_model(model, tmp / "m.safetensors", spec=spec)
            export_onnx(tmp / "m.safetensors", tmp / "m.onnx", image_size=image_size)
            sess = ort_session(tmp / "m.onnx", settings.threads)

        def run_fn(x):
            return sess.run(None, {"images": x.numpy()})
    elif settings.compile:
        run_fn = torch.compile(dep)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_mb()
    out = {}
    for key, b in (("latency_ms", min(batches)), ("throughput", max(batches))):
        x = torch.randint(0, 256, (b, 1, image_size, image_size), dtype=torch.uint8, device=device)

        def fn(x=x):
            with torch.no_grad(), autocast(device, precision):
                return run_fn(x)

        out[key] = (_time(fn, device, max_run_time), b)
    lat, b_lat = out["latency_ms"]
    thr, b_thr = out["throughput"]
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb() - rss0)
    return {"latency_ms": {**lat, "batch": b_lat}, "throughput_img_s": b_thr / (thr["median"] / 1000.0),
            "throughput_batch": b_thr, "throughput_ms": thr, "peak_mem_mb": round(max(peak, 0.0), 1),
            "precision": precision}


def bench(target: str, drops: list[int] | None = None, settings: BenchSettings = BenchSettings(),
          progress=None) -> dict:
    """Bench every truncation level of an architecture (or ``drops``), or one model file / run dir (at the
    model's own image size unless ``settings.image_size``)."""
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.anatomy_cache import cached_anatomy
    from chexcut.models.modelfile import load_model
    from chexcut.models.registry import default_image_size, get_arch
    from chexcut.models.source import ModelSource
    from chexcut.models.surgery import truncate

    s = settings
    image_size, threads = s.image_size, s.threads
    dev = check_settings(s.device, s.precision, threads, s.runtime, s.compile, list(s.batches))
    source = ModelSource.parse(target)
    if source.is_file:
        spec = source.spec()
        if drops:
            raise ChexcutError("--drops applies to an architecture name; a model file is one truncation level")
        arch, levels = get_arch(spec.arch), [spec.drop]
        size = int(image_size or spec.preprocess.image_size)
    else:
        arch = get_arch(source.arch)
        levels = list(drops) if drops else list(range(arch.family.num_blocks))
        bad = [d for d in levels if not 0 <= d < arch.family.num_blocks]
        if bad:
            raise ChexcutError(f"--drops {bad[0]} is out of range for {arch.name}: valid 0..{arch.family.num_blocks - 1}")
        size = int(image_size or default_image_size(arch))
    check_image_size(arch.name, size)
    if threads:
        torch.set_num_threads(threads)
    anat = cached_anatomy(arch.name, size, 14)
    rows = []
    for i, d in enumerate(levels):
        if progress:
            progress(i, len(levels), info=f"drop {d}")
        model = load_model(source.file, image_size=size) if source.is_file else truncate(arch.name, drop=d,
                                                                                          weights="none", image_size=size)
        t = anat["truncations"][d]
        res = bench_level(model, model.chexcut_spec, dev, size, s)
        rows.append({"drop": d, "keep": t["keep"], "params": model.chexcut_spec.params, "macs": t["macs"],
                     **res, "device": str(dev), "runtime": s.runtime})
    if progress:
        progress(len(levels), len(levels))
    base = next((r for r in rows if r["drop"] == 0), None)
    for r in rows:
        if base:
            r["speedup_latency"] = base["latency_ms"]["median"] / r["latency_ms"]["median"]
            r["speedup_throughput"] = r["throughput_img_s"] / base["throughput_img_s"]
            r["params_ratio"] = base["params"] / r["params"]
    return {"arch": arch.name, "target": str(target), "image_size": size, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None, "runtime": s.runtime,
            "precision": rows[0]["precision"] if rows else s.precision, "channels_last": s.channels_last,
            "compile": s.compile, "batches": list(s.batches), "torch": torch.__version__, "levels": rows}


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
