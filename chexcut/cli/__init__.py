"""The ``chexcut`` command: parse, call the library, render. No logic lives here.

One module per command group (``models``, ``data``, ``train``, ``evaluate``, ``deploy``, ``study``) registers
its commands on the one Typer ``app`` (:mod:`chexcut.cli.app`) when imported here; :func:`main`
(:mod:`chexcut.cli.main`) is the entry point. Torch is imported inside commands only, so ``chexcut --help`` and
shell completion stay fast.
"""

from chexcut.cli.app import app

# The command modules register themselves on ``app``; imported in the order ``chexcut --help`` lists them.
# isort: off
from chexcut.cli import models, data, train, evaluate, deploy, study  # noqa: F401, E402
# isort: on
from chexcut.cli.main import main  # noqa: E402

__all__ = ["app", "main"]
