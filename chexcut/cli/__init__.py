"""The ``chexcut`` command: parse, call the library, render. No logic lives here.

One module per command group (``models``, ``data``, ``train``, ``evaluate``, ``deploy``, ``study``) on one
Typer ``app``; :func:`main` is the entry point. Torch is imported inside commands only, so ``chexcut --help``
and shell completion stay fast.
"""

from chexcut.cli.main import app, main

__all__ = ["app", "main"]
