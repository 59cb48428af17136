"""How the help screens are grouped and what they end with, declared once: the option panels of every command with
more than 12 options (a test checks each of their options is in one panel) and two or three examples per command.
:func:`polish` applies them to the Click command tree Typer builds, with flags shown without a ``<bool>`` type;
the generated CLI reference (:mod:`chexcut.cli.reference`) reads the same tree."""

from __future__ import annotations

_DATA = ["csv", "path_col", "labels", "views", "uncertain", "blank", "valid_frac", "label_map"]

#: command path -> panel title -> option names (Python parameter names), in the order the panels are shown.
PANELS: dict[str, dict[str, list[str]]] = {
    "evaluate": {
        "What to evaluate": ["data", "split", "predictions", "truth", "labels", "logits", "key_col", "allow_overlap",
                             "allow_missing", "images_outside"],
        "Data selection": [o for o in _DATA if o != "labels"],
        "Statistics": ["bootstrap", "ci", "seed", "cluster", "level", "method", "alpha"],
        "Comparison and ensembles": ["compare", "margin", "equivalence", "ensemble", "ensemble_weights", "average"],
        "Subgroups, calibration and clinical utility": ["by", "groups", "age_bins", "calibration", "decision_curve",
                                                        "prevalence_matched"],
        "Operating points, readers and failures": ["at_specificity", "at_sensitivity", "thresholds", "threshold_rule",
                                                   "readers", "failures", "failure_images"],
        "Outputs": ["json", "csv_out", "plots", "predictions_out", "track", "quiet"],
        "Inference and devices": ["image_size", "batch_size", "device", "precision", "workers", "cache"],
    },
    "finetune": {
        "Model, data and run": ["data", "out", "resume", "force", "drop", "keep", "weights", "in_chans", "seed",
                                "images_outside"],
        "Data selection": _DATA,
        "Training recipe": ["recipe", "epochs", "batch_size", "lr", "layer_decay", "adapt", "label_fraction", "image_size",
                            "resize", "val_every", "precise_bn", "max_steps"],
        "Speed and devices": ["precision", "channels_last", "compile", "workers", "device", "cache", "skip_missing"],
        "Output and tracking": ["log_every", "log_format", "quiet", "track", "track_experiment", "track_tag",
                                "track_models"],
    },
    "probe": {
        "Model, data and output": ["data", "out", "split", "drop", "keep", "weights", "in_chans", "seed",
                                   "label_fraction", "json", "quiet"],
        "Data selection": _DATA + ["images_outside"],
        "Statistics": ["bootstrap", "ci", "alpha", "method", "cluster", "level"],
        "Features": ["image_size", "batch_size", "device", "precision", "workers", "cache"],
    },
    "study plan": {
        "Data and grid": ["data", "out", "archs", "weights", "drops", "adapts", "label_fractions", "seeds", "force",
                          "json"],
        "Every run's finetune": ["in_chans", "recipe", "epochs", "batch_size", "lr", "image_size", "val_every",
                                 "precision", "channels_last", "compile", "workers", "precise_bn", "layer_decay",
                                 "max_steps", "log_every", "device", "resize", "cache", "skip_missing"],
        "Every run's data selection": _DATA + ["images_outside"],
        "Every run's evaluation": ["bootstrap", "ci", "cluster", "level", "method", "alpha", "by", "age_bins", "groups", "calibration", "at_specificity", "at_sensitivity",
                                   "decision_curve", "prevalence_matched", "failures", "external", "bench"],
        "Slurm": ["slurm", "nodes", "gpus_per_task", "cpus_per_task", "time", "partition", "account", "mem",
                  "signal_before", "requeue", "sbatch"],
        "Tracking": ["track", "track_models", "track_experiment", "track_tag"],
    },
    "truncate": {
        "Model": ["drop", "keep", "weights", "labels", "in_chans", "pool", "seed"],
        "Preprocessing recorded in the model file": ["image_size", "resize"],
        "Output": ["out", "force", "json", "quiet"],
    },
    "prepare": {
        "Images and cache": ["image_size", "resize", "cache", "workers", "skip_missing", "skip_bad", "images_outside"],
        "Data selection": _DATA,
        "Output": ["json", "quiet"],
    },
    "explain": {
        "What to explain": ["data", "csv", "split", "limit", "labels", "top", "layer", "skip_bad", "images_outside"],
        "Checks": ["check", "check_limit"],
        "Output": ["out", "json", "quiet"],
    },
}

#: command path -> two or three example lines (shown at the end of its help and in the CLI reference).
EXAMPLES: dict[str, list[str]] = {
    "list": ["chexcut list", "chexcut list --json -"],
    "inspect": ["chexcut inspect resnet50", "chexcut inspect vit_base_patch16_224 --image-size 320",
                "chexcut inspect densenet121 --image-size 320 --json -"],
    "truncate": ["chexcut truncate resnet50 --drop 2 -o resnet50-d2.safetensors",
                 "chexcut truncate densenet121 --keep 3 --weights none -o d121-k3.safetensors",
                 "chexcut truncate vit_base_patch16_224 --drop 4 --pool avg --image-size 320 -o vitb-d4.safetensors"],
    "prepare": ["chexcut prepare data/chexpert --image-size 320", "chexcut prepare nih:data/nih --views all --json -"],
    "phantom": ["chexcut phantom data/phantom --n 600", "chexcut phantom data/nih-phantom --layout nih --n 200"],
    "finetune": ["chexcut finetune resnet50 --drop 2 --data data/chexpert --out runs/r50-d2",
                 "chexcut finetune densenet121 --weights none --data nih:data/nih --out runs/d121 --recipe fast",
                 "chexcut finetune --resume runs/r50-d2"],
    "evaluate": ["chexcut evaluate runs/r50-d2 --bootstrap 1000 --json -",
                 "chexcut evaluate runs/r50-d2 --data padchest:data/padchest --by Sex --json ext.json",
                 "chexcut evaluate --predictions preds.csv --truth test_labels.csv --compare other.csv"],
    "probe": ["chexcut probe resnet50 --data data/chexpert --out probes/r50",
              "chexcut probe vit_small_patch14_dinov2 --weights dinov2 --data data/chexpert --out probes/dinov2 "
              "--label-fraction 0.1",
              "chexcut probe runs/r50-d2 --data nih:data/nih --out probes/r50-d2-nih --json -"],
    "ensemble": ["chexcut ensemble runs/a runs/b runs/c -o runs/ensemble",
                 "chexcut ensemble a.csv b.csv --truth labels.csv -o ens --average logits"],
    "bench": ["chexcut bench resnet50 --drops 0,1,2", "chexcut bench runs/r50-d2 --runtime onnxruntime --json -"],
    "export": ["chexcut export runs/r50-d2 -o r50-d2.onnx", "chexcut export resnet50-d2.safetensors -o r50-d2.onnx --image-size 320"],
    "explain": ["chexcut explain runs/r50-d2 xray.png -o heatmaps",
                "chexcut explain runs/r50-d2 --data data/chexpert --check -o checks"],
    "report": ["chexcut report studies/main -o report", "chexcut report runs/* --json -"],
    "demo": ["chexcut demo chexcut-demo", "chexcut demo demo-small --archs resnet18 --drops 0,1 --n 200 --offline"],
    "card": ["chexcut card runs/r50-d2 -o card.md --html card.html",
             "chexcut card studies/main -o card.md --about about.yaml"],
    "datasets": ["chexcut datasets", "chexcut datasets --json -"],
    "datasets index": ["chexcut datasets index nih:data/nih -o nih-index.csv",
                       "chexcut datasets index data/padchest -o padchest-index.csv --json -"],
    "weights list": ["chexcut weights list", "chexcut weights list --json -"],
    "weights fetch": ["chexcut weights fetch resnet50 densenet121", "chexcut weights fetch --all --mirror /shared/w"],
    "weights path": ["chexcut weights path resnet50", "chexcut weights path densenet121"],
    "study plan": ["chexcut study plan --data data/chexpert --out studies/main --archs resnet18,densenet121",
                   "chexcut study plan --data data/chexpert --out studies/slurm --slurm --time 12:00:00 "
                   "--external nih:data/nih",
                   "chexcut study plan --data data/chexpert --out studies/how-much --adapts probe,full "
                   "--label-fractions 0.1,1"],
    "study run": ["chexcut study run studies/main --jobs 2", "chexcut study run studies/main -q"],
    "study exec": ["chexcut study exec studies/main --index 0",
                   "chexcut study exec studies/main resnet18-imagenet-d0-s0 --launcher 'torchrun --nproc-per-node 2'"],
    "study status": ["chexcut study status studies/main", "chexcut study status studies/main --watch 30"],
}


def _walk(command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _walk(sub, path + (name,))


def commands(root):
    """(command path, Click command) for every command and group under ``root``."""
    return [(" ".join(p), c) for p, c in _walk(root) if p]


def _flags_without_type() -> None:
    """Typer prints ``<bool>`` as the type of every flag (``--help`` too): show none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "chexcut", False):
        return

    def display_type_rich(self, ctx):
        return "" if self.is_flag else shown(self, ctx)

    display_type_rich.chexcut = True
    TyperOption.display_type_rich = display_type_rich


def command():
    """The chexcut command tree, polished (what ``main`` runs and the reference documents)."""
    import typer.main

    from chexcut.cli.app import app

    return polish(typer.main.get_command(app))


def _settings_default(settings: str, name: str):
    """The default of field ``name`` of the settings class ``settings`` (an option's ``fills``)."""
    import dataclasses

    from chexcut.data.tables import DataOptions
    from chexcut.demo import Demo
    from chexcut.evaluation.settings import Inference, Statistics
    from chexcut.study.slurm import Slurm

    classes = {"DataOptions": DataOptions, "Demo": Demo, "Inference": Inference, "Statistics": Statistics,
               "Slurm": Slurm}
    (f,) = [f for f in dataclasses.fields(classes[settings]) if f.name == name]
    return f.default


def _shown(declared, default) -> str | bool:
    """How --help shows a settings default: a tuple as a comma list, a switch by its flag, None not at all."""
    if default is None:
        return False
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, bool) and declared.switch:
        on, off = declared.flags[0].split("/")
        return on if default else off
    return str(default)


def polish(root):
    """Apply the declarations' per-command parts (help, required, the settings default shown), the panels and
    the examples to the command tree and show flags without a type; returns ``root``."""
    from chexcut.options import BY_NAME

    _flags_without_type()
    for path, command in commands(root):
        panels = {name: title for title, names in PANELS.get(path, {}).items() for name in names}
        for param in command.params:
            declared = BY_NAME.get(param.name) if param.param_type_name == "option" else None
            if declared is not None:
                param.help = declared.help_for(path)
                param.required = path in declared.required_in
                fills = declared.fills_for(path)
                if fills:
                    param.show_default = _shown(declared, _settings_default(fills, param.name))
            if param.name in panels:
                param.rich_help_panel = panels[param.name]
        if path in EXAMPLES:
            command.epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in EXAMPLES[path])
    return root
