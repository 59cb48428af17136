"""Precise BN: BatchNorm running statistics re-estimated on training images before a validation."""

from __future__ import annotations

import numpy as np
import torch


def reestimate_batchnorm(model: torch.nn.Module, batches, forward=None, devices=()) -> int:
    """Reset every BatchNorm's running statistics and set them to the exact average over ``batches``
    (inputs, with the current weights, no gradients); the RNG (the CPU's and ``devices``') is left as it
    was. Returns the BN count."""
    from chexcut.training.adapt import frozen_batchnorms, train_mode

    frozen = {id(m) for m in frozen_batchnorms(model)}  # a frozen block keeps its pretrained statistics
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in frozen]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    was_training = model.training
    forward = forward or model
    try:
        with torch.random.fork_rng(devices=list(devices)), torch.no_grad():
            train_mode(model)
            for x in batches:
                forward(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        if was_training:
            train_mode(model)
        else:
            model.eval()
    return len(bns)


def precise_bn(s) -> None:
    """BatchNorm re-estimation ("precise BN") of session ``s`` before validation, on ``cfg.precise_bn`` training images.

    After few steps the running averages lag far behind the weights, and eval mode then predicts nearly
    a constant (MobileNetV2 at chance in a short run). The images are a fixed, seeded choice, the same on
    every rank, and the training RNG is untouched, so resume stays bit-exact."""
    from chexcut.data.batches import make_loader
    from chexcut.models.infer import autocast
    from chexcut.training.session import eval_batch_size

    n = min(s.cfg.precise_bn, len(s.data.train_ds))
    if n <= 0:
        return
    rows = np.random.default_rng([s.cfg.seed, 4242]).permutation(len(s.data.train_ds))[:n]
    bs = eval_batch_size(s.cfg)
    loader = make_loader(s.data.train_ds, [rows[i:i + bs].tolist() for i in range(0, n, bs)],
                         s.cfg.workers if s.data.cache is not None else 0, s.device.type == "cuda")
    inputs = (s.spec.preprocess.normalise(images.to(s.device, non_blocking=True), s.channels_last)
              for images, _t, _m, _r in loader)

    def forward(x):
        with autocast(s.device, s.precision):
            s.model(x)

    reestimate_batchnorm(s.model, inputs, forward, devices=[s.device] if s.device.type == "cuda" else [])
