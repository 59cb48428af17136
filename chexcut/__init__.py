"""chexcut: which ImageNet backbone, how much of it, and is the difference real?

The library under the ``chexcut`` command. Heavy imports (torch) happen on first use,
so ``import chexcut`` stays cheap::

    import chexcut
    model = chexcut.truncate("resnet50", drop=2, weights="none")
    chexcut.save_model(model, "r50-d2.safetensors")
    again = chexcut.load_model("r50-d2.safetensors")
"""

from chexcut.version import __version__

__all__ = ["truncate", "save_model", "load_model", "ChexcutError", "__version__"]

from chexcut.errors import ChexcutError


def __getattr__(name):
    if name == "truncate":
        from chexcut.models.surgery import truncate

        return truncate
    if name in ("save_model", "load_model"):
        from chexcut.models import modelfile

        return getattr(modelfile, name)
    raise AttributeError(f"module 'chexcut' has no attribute {name!r}")
