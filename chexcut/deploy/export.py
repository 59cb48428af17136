"""A chexcut model as a self-contained ONNX graph: uint8 grey images (N, 1, H, W) -> 14 probabilities.

The graph holds what a deployment would otherwise re-implement (and get subtly wrong): scaling to
[0, 1], replication of the grey channel, the model's per-channel normalisation, the network and the
sigmoid. The batch dimension is dynamic. The ONNX metadata carries the label names (``labels``, JSON)
and the chexcut spec (``chexcut``, JSON). After writing, the file is run in ONNX Runtime on generated
images and compared with chexcut's own predictions; above ``atol`` the file is refused and deleted.

onnx and onnxruntime are an optional extra: ``pip install "chexcut[export]"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chexcut.errors import ChexcutError
from chexcut.models.spec import ModelSpec

OPSET = 17
ATOL = 1e-4


class Deployable(nn.Module):
    """uint8 (N, 1, H, W) -> probabilities (N, L): chexcut's normalisation, the model, the sigmoid."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model = model.eval()
        self.preprocess = spec.preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(self.preprocess.normalise(images)))


def require_onnx():
    """(onnx, onnxruntime), or one line saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ChexcutError('ONNX export needs onnx and onnxruntime: pip install "chexcut[export]"') from None
    return onnx, onnxruntime


def ort_session(path: Path, threads: int | None = None):
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(path: Path, deployable: Deployable, image_size: int, seed: int = 0) -> float:
    """Max |ONNX Runtime - chexcut| over generated uint8 images, at batch sizes 1 and 3."""
    sess = ort_session(path)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in (1, 3):
        x = torch.randint(0, 256, (n, 1, image_size, image_size), dtype=torch.uint8, generator=g)
        got = sess.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():  # chexcut's own predict path: normalise, model, sigmoid (float64)
            logits = deployable.model(deployable.preprocess.normalise(x))
            want = torch.sigmoid(logits.double()).numpy()
        if got.shape != want.shape:
            raise ChexcutError(f"the exported graph returns {got.shape}, chexcut {want.shape}")
        worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()))
    return worst


def export_onnx(model_path, out: Path, image_size: int | None = None, force: bool = False, atol: float = ATOL,
                opset: int = OPSET) -> dict:
    """Write ``model_path`` (a model file or run dir) as ONNX to ``out``; returns what was written and the
    measured parity. Nothing is left at ``out`` when any step fails."""
    import warnings

    from chexcut.fileio import atomic_path, check_writable
    from chexcut.models.anatomy import check_image_size
    from chexcut.models.modelfile import load_model, read_spec
    from chexcut.models.source import ModelSource

    onnx, _ = require_onnx()
    out = Path(out)
    if out.suffix != ".onnx":
        raise ChexcutError(f"-o {out}: give a file name ending in .onnx (or --format hub for a Hugging Face model folder)")
    path = ModelSource.parse(str(model_path)).require_file("export")
    check_writable(out, force=force, inputs=[model_path, path])  # a run's best.safetensors, through a symlink too
    spec = read_spec(path)
    size = int(image_size or spec.preprocess.image_size)
    check_image_size(spec.arch, size)
    model = load_model(path, image_size=size)  # a ViT exported at another size: its position embeddings resampled
    spec = model.chexcut_spec
    dep = Deployable(model, spec).eval()
    example = torch.zeros((2, 1, size, size), dtype=torch.uint8)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(dep, (example,), str(tmp), dynamo=False, input_names=["images"],
                          output_names=["probabilities"], opset_version=opset,
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
        graph = onnx.load(str(tmp))
        for key, value in (("labels", json.dumps(list(spec.labels))), ("chexcut", json.dumps(spec.to_json(), sort_keys=True)),
                           ("input", f"uint8 (N, 1, {size}, {size}) grey images, 0-255"),
                           ("output", f"float32 (N, {len(spec.labels)}) probabilities")):
            graph.metadata_props.add(key=key, value=value)
        graph.producer_name = "chexcut"
        onnx.save(graph, str(tmp))
        diff = parity(Path(tmp), dep, size)
        if not diff <= atol:
            raise ChexcutError(f"ONNX Runtime's predictions differ from chexcut's by {diff:.2e} (> {atol:g}): "
                               f"{out} refused and not written")
    return {"path": str(out), "model": str(path), "arch": spec.arch, "drop": spec.drop, "image_size": size,
            "resize": spec.preprocess.resize, "labels": list(spec.labels), "opset": opset, "max_abs_diff": diff, "atol": atol,
            "input": "images: uint8 (N, 1, H, W)", "output": "probabilities: float32 (N, L)"}
