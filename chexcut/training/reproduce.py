"""The finetune command line that reproduces a run, read from its ``config.json`` alone.

Every training setting is one of :data:`~chexcut.options.TRAIN_OPTIONS` (written when it differs from the
recipe's value), every data setting one of :data:`~chexcut.options.DATA` (written when it differs from
:class:`~chexcut.data.tables.DataOptions`' default), and the model is the recorded source (an architecture with
its drop, weights and channels, or a model file). Run as printed, the command writes the same ``config.json``
(paths and times aside): the model card prints it, and a test runs it.
"""

from __future__ import annotations

import shlex


def finetune_argv(config: dict, out) -> list[str]:
    """``chexcut finetune ...`` as an argv that trains ``config.json``'s run again into ``out``."""
    from chexcut.data.tables import DataOptions
    from chexcut.labels import CHEXPERT_LABELS
    from chexcut.options import DATA, TRAIN_OPTIONS
    from chexcut.training.config import TrainConfig

    source, data, train = config["model_source"], config["data"], config["train"]
    argv = ["chexcut", "finetune"]
    if source.get("file"):
        argv.append(str(source["file"]))
    else:
        argv += [str(source["arch"]), "--drop", str(source["drop"]), "--weights", str(source["weights"])]
        if source.get("in_chans") not in (None, "None"):
            argv += ["--in-chans", str(source["in_chans"])]
    folder = f"{data['dataset']}:{data['dir']}" if data.get("dataset") else str(data["dir"])
    argv += ["--data", folder, "--out", str(out)]
    defaults = DataOptions()
    for option in DATA:  # the DataOptions fields (--data and --split are the command's own)
        field, flag = option.name, option.flag
        if field in ("data", "split"):
            continue
        value = data.get(field)
        if field == "labels":  # recorded as resolved: any list but the 14 in their order is written out
            if value and list(value) != list(CHEXPERT_LABELS):
                argv += [flag, ",".join(value)]
            continue
        if value is None or value == getattr(defaults, field):
            continue
        argv += [flag] if isinstance(value, bool) else [flag, str(value)]
    if data.get("cache"):
        argv += ["--cache", str(data["cache"])]
    recipe = TrainConfig.from_recipe(str(train.get("recipe") or "paper"), seed=int(train["seed"]))
    for option in TRAIN_OPTIONS:
        value = train.get(option.name)
        if option.name != "recipe" and (value is None or value == getattr(recipe, option.name)):
            continue
        if option.switch:
            argv.append(f"--{option.name.replace('_', '-')}" if value else f"--no-{option.name.replace('_', '-')}")
        else:
            argv += [f"--{option.name.replace('_', '-')}", str(value)]
    return argv + ["--seed", str(train["seed"])]


def finetune_command(config: dict, out) -> str:
    """:func:`finetune_argv` as one shell line, every word quoted as a shell needs it."""
    return shlex.join(finetune_argv(config, out))
