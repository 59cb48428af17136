"""Every command-line option, declared once: its flags, help, default, bounds and the settings object it fills.

A command lists an option as a parameter of its own name and type whose default is the declaration
(``bootstrap: Optional[int] = OPT.bootstrap``, :data:`chexcut.cli.app.OPT`), so a reader finds ``bootstrap`` in the
signature and everything else here. What varies between the commands that share a flag belongs to the declaration:
a help text per command (``help_in``), the commands where it must be given (``required_in``) and the settings
object whose default applies (``fills``; the option's own default is then ``None``: "not given, the settings'
default", written once, in that settings object). No typer or torch here; :mod:`chexcut.cli.app` makes the Typer
options and :func:`chexcut.cli.panels.polish` applies the per-command parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chexcut.choices import RESIZE_HELP


@dataclass(frozen=True)
class Option:
    """One option: ``name`` is the parameter, and the field of the settings object it fills."""

    name: str
    flags: tuple[str, ...]  # "--name" (or "--name/--no-name" for a flag with an off switch), then short forms
    help: str
    default: object = None  # None: not given (the settings object's default, or the command decides)
    bound: bool = False  # Typer's min/max from chexcut.choices.BOUNDS[name]
    help_in: dict[str, str] = field(default_factory=dict)  # command path -> its own help text
    required_in: tuple[str, ...] = ()  # command paths where it must be given
    fills: str | dict[str, str] | None = None  # the settings class whose default applies (per command: a dict)
    envvar: str | None = None
    on_resume: bool = False  # a training setting that may change with finetune --resume

    @property
    def flag(self) -> str:
        """The long flag, as an error names it (``--calibration`` for ``--calibration/--no-calibration``)."""
        return self.flags[0].split("/")[0]

    @property
    def switch(self) -> bool:
        """A flag given as ``--name`` or ``--no-name``."""
        return "/" in self.flags[0]

    def help_for(self, command: str) -> str:
        return self.help_in.get(command, self.help)

    def fills_for(self, command: str) -> str | None:
        return self.fills.get(command, self.fills.get("*")) if isinstance(self.fills, dict) else self.fills


def _o(name: str, help: str, *short: str, **kw) -> Option:
    """A declaration whose flag is ``--name-with-dashes`` (a bool with ``switch=True``: ``--x/--no-x``)."""
    dashed = "--" + name.replace("_", "-")
    flag = f"{dashed}/--no-{dashed[2:]}" if kw.pop("switch", False) else dashed
    return Option(name, (flag, *short), help, **kw)


_TRACK_HELP = ("Log to MLflow at this tracking URI (sqlite:///PATH/mlflow.db, a folder, or a server; default: "
               "$CHEXCUT_TRACKING_URI). Needs chexcut[track].")

#: The data options (:class:`chexcut.data.tables.DataOptions`): which rows and labels of a data set.
DATA = (
    _o("data", "Dataset folder: CheXpert layout, a published set as SET:DIR (nih:, padchest:, mimic:, vinbigdata:, "
       "...; `chexcut datasets`) or detected from its files, or the base of --csv paths.", required_in=("probe", "study plan"),
       help_in={"evaluate": "Dataset folder (default: a run's own); SET:DIR for a published set (nih:, padchest:, "
                            "...): an external evaluation on the labels both annotate.",
                "ensemble": "Dataset folder or SET:DIR (default: the first run's own validation set).",
                "explain": "A dataset instead of IMAGES (with --csv, --split, --limit).",
                "probe": "Dataset folder (SET:DIR for a published set): the probes are fit on its train rows.",
                "study plan": "Dataset folder for every run (SET:DIR for a published set)."}),
    _o("csv", "A generic CSV instead of train.csv/valid.csv."),
    _o("path_col", "Column of image paths (relative to DATA; default: Path, or a run's).", fills="DataOptions"),
    _o("labels", "Comma-separated label columns (default: the CheXpert 14 present).",
       help_in={"evaluate": "Comma-separated labels to evaluate (default: the model's). (Deprecated: a label CSV "
                            "here; use --truth FILE.)",
                "explain": "Comma-separated labels (default: the 5 competition tasks).",
                "truncate": "Comma-separated head labels (default: the 14 CheXpert observations)."}),
    _o("views", "Which views (default: frontal, or a run's).", fills="DataOptions"),
    _o("uncertain", "Uncertain (-1) labels: ones | zeros | ignore | chexpert | A=ones,B=zeros,default=zeros "
       "(default: zeros, or a run's).", fills="DataOptions"),
    _o("blank", "Blank labels: zeros (not mentioned) or ignore (default: zeros, or a run's).", fills="DataOptions"),
    _o("valid_frac", "Valid share of patients when there is no valid.csv (default: 0.1, or a run's).",
       fills="DataOptions"),
    _o("label_map", "CSV (chexpert,source) replacing a published set's declared mapping to the CheXpert 14 for the "
       "labels it names."),
    Option("images_outside", ("--images-outside-data",), "Allow image paths in the label file that lead outside "
           "the data folder (absolute elsewhere, or with ..); refused by default.", default=False),
    _o("split", "Rows of the data to evaluate on (default: valid).",
       help_in={"ensemble": "Which rows of --data.", "explain": "Rows of --data (default: valid).",
                "probe": "Rows of --data the probes are evaluated on (default: valid; they are fit on train)."}),
)

#: Images, their cache, and how a model runs over them (:class:`chexcut.evaluation.settings.Inference`).
INFERENCE = (
    _o("image_size", "Input size in pixels (default: the model file's own preprocessing).", bound=True,
       fills={"demo": "Demo"},
       help_in={"bench": "Default: the model file's, or 320 for an architecture.",
                "export": "Size of the example input (default: the model file's); the batch stays dynamic. With "
                          "--format hub: the input size the folder records (a ViT resampled).",
                "finetune": "Square input in pixels (default: the recipe's, 320).",
                "study plan": "Every run's square input in pixels (default: the recipe's, 320).",
                "inspect": "Input size for shapes and MACs (default: 320, rounded to a size the family takes (322 "
                           "for a /14 ViT), or the model file's).",
                "truncate": "Image size recorded in the model file and used for MACs; a ViT or Swin is built for it "
                            "(default: 320, rounded to a size the family takes).",
                "phantom": "Square image size in pixels (default: 320).",
                "prepare": "Square image size in pixels (default: 320)."}),
    _o("resize", RESIZE_HELP + " (default: squash)", help_in={
        "truncate": "Resize mode recorded in the model file (its preprocessing; default: squash)."}),
    _o("batch_size", "Images per batch (default: 64).", bound=True,
       fills={"*": "Inference", "finetune": None, "study plan": None},
       help_in={"finetune": "Images per step and process (default: the recipe's).",
                "study plan": "Images per step and process of every run (default: the recipe's)."}),
    _o("device", "cpu | cuda | cuda:N (default: cuda if available).", on_resume=True),
    _o("precision", "bf16 | fp16 | fp32 | auto (default: auto = bf16 on GPU, fp32 on CPU).",
       help_in={"bench": "bf16 | fp16 | fp32 | auto (default: fp32).",
                "finetune": "Default: the recipe's; auto = bf16 on GPU, fp32 on CPU.",
                "study plan": "Every run's (default: the recipe's; auto = bf16 on GPU, fp32 on CPU)."}),
    _o("workers", "DataLoader worker processes (default: 4, at most the CPUs this process may use: its affinity, "
       "SLURM_CPUS_PER_TASK).", bound=True, help_in={"prepare": "Decoding processes (default: the CPUs this process may "
                                                                "use)."}),
    _o("cache", "Image cache folder (default: ~/.cache/chexcut/images/KEY)."),
    _o("skip_missing", "Proceed without missing image files (reported).", default=False),
    _o("skip_bad", "Proceed past unreadable images (reported).", default=False),
    _o("channels_last", "channels_last memory format (default: the recipe's; bench: off).", switch=True),
    _o("compile", "torch.compile the model (GPU only; default: the recipe's; bench: off).", switch=True),
)

#: The statistics of an evaluation (:class:`chexcut.evaluation.settings.Statistics`); a study takes them all.
STATISTICS = (
    _o("bootstrap", "Bootstrap replicates (0 disables).", bound=True, fills={"*": "Statistics", "demo": "Demo"},
       help_in={"ensemble": "Replicates for CIs and the paired test against the best member.",
                "report": "Replicates for the paired comparisons.",
                "study plan": "Replicates for each run's evaluate."}),
    _o("ci", "Confidence level.", fills="Statistics"),
    _o("cluster", "Resample by patient, study or none.", fills="Statistics"),
    _o("level", "study (max over views, official CheXpert) or image.", fills="Statistics"),
    _o("method", "Paired test per label.", fills="Statistics"),
    _o("alpha", "Significance level for the verdict.", fills="Statistics"),
    _o("margin", "With --compare: non-inferiority margin in AUROC units (e.g. 0.02); tests H0: delta <= -M.",
       help_in={"report": "Non-inferiority margin (AUROC units) for parameter efficiency (default: 0.02)."}),
    _o("equivalence", "With --margin: also test equivalence within +-M (TOST).", fills="Statistics"),
    _o("target_auroc", "The AUROC the learning curves predict the labelled patients for, in (0, 1) (default: the "
       "best configuration's)."),
    _o("by", "Subgroups: comma-separated columns of the truth CSV or --groups (e.g. Sex,AP/PA).",
       help_in={"study plan": "Each evaluate: subgroups by these columns of the data's CSVs or --groups."}),
    _o("age_bins", "With --by Age: interval edges, e.g. 0,40,60,80,200."),
    _o("groups", "A CSV of subgroup columns keyed like the truth (a study: by Path)."),
    _o("calibration", "Brier, ECE and recalibration slope/intercept with CIs.", switch=True, fills="Statistics"),
    _o("at_specificity", "Operating point per label: the best sensitivity at specificity >= S (repeatable or "
       "S1,S2; chosen on this set: optimistic)."),
    _o("at_sensitivity", "Operating point per label: the best specificity at sensitivity >= S (repeatable or "
       "S1,S2)."),
    _o("decision_curve", "Net benefit of the model, treat-all and treat-none at threshold probabilities 0.01-0.99, "
       "with CIs (Vickers & Elkin 2006).", fills="Statistics"),
    _o("prevalence_matched", "With --by: compare the groups' average precision after matching each group's "
       "prevalence to the whole set's.", fills="Statistics"),
    _o("failures", "Per label, list the N most confident false positives and negatives at the operating "
       "threshold.", bound=True, fills="Statistics"),
    _o("seed", "Seed (default: 0).", bound=True, default=0, help_in={
        "evaluate": "Bootstrap seed.", "ensemble": "Bootstrap seed.", "report": "Bootstrap seed.",
        "finetune": "Seed of the run (data order, augmentation, a new head).",
        "probe": "Seed of the validation patients that choose C, the --label-fraction draw, the bootstrap and random "
                 "weights.",
        "truncate": "Seed for random initialisation (the new head; all weights with --weights none).",
        "phantom": "Draws the phantom data.", "demo": "Draws the phantom data and seeds every run."}),
)

#: What evaluate compares, averages and writes besides the statistics.
EVALUATION = (
    _o("predictions", "Predictions CSV (Path + one probability column per label)."),
    Option("truth", ("--truth", "--label-csv"), "The label CSV for --predictions (CheXpert valid.csv layout).",
           help_in={"ensemble": "With predictions CSVs: the truth CSV."}),
    _o("compare", "Another model, run dir or predictions CSV on the same rows."),
    _o("ensemble", "Further members averaged with MODEL (runs, model files or predictions CSVs; repeatable or comma "
       "list): the ensemble is evaluated and compared with its best member."),
    _o("ensemble_weights", "One weight per member, MODEL first (default: equal).",
       help_in={"ensemble": "One weight per member, in the order given (default: equal)."}),
    _o("average", "Average the members' probabilities or logits (default: probabilities)."),
    _o("allow_overlap", "Evaluate even when the set shares images or patients with the run's training rows "
       "(flagged).", default=False),
    _o("allow_missing", "With --predictions: evaluate although a competition label's column is missing (the mean "
       "says how many it covers).", default=False),
    _o("logits", "Predictions are logits (any real number): ranked as they are.", default=False),
    _o("key_col", "Key column of --predictions, --truth, --compare and --groups (default: Path, else Study)."),
    _o("failure_images", "With --failures and a MODEL: a contact sheet per label of those cases with their "
       "Grad-CAM maps."),
    _o("thresholds", "Thresholds chosen on another set, applied here: a finetune RUN (its validation predictions, "
       "by --threshold-rule), an evaluation JSON, or a label,threshold CSV."),
    _o("threshold_rule", "How --thresholds RUN|JSON chose them: youden (default), specificity:S or sensitivity:S."),
    _o("readers", "Readers' binary reads keyed like the truth (FILE or NAME=FILE; repeatable or comma list): placed "
       "against the model's ROC curve."),
    _o("plots", "Folder for per-label ROC (with CI band, readers, operating points), PR and reliability PNGs."),
    _o("predictions_out", "Write MODEL's predictions CSV here."),
    _o("csv_out", "Write per-label results as CSV."),
)

#: The model a command builds (:class:`chexcut.models.source.ModelSource`).
MODEL = (
    _o("drop", "Final blocks to remove (0..B-1; default: 0).", bound=True,
       help_in={"finetune": "With an architecture name: final blocks to remove (default: 0).",
                "probe": "With an architecture name: final blocks to remove; the rest are probed (default: 0)."}),
    _o("keep", "Blocks to keep (1..B); instead of --drop.", bound=True),
    _o("weights", "imagenet | none | a pretraining source NAME or NAME:PATH (`chexcut weights list`: dinov2, "
       "rad-dino, txrv-all, ...) | PATH to a state dict of the full architecture | an uncut chexcut model of it (a "
       "model file, a published folder or hf-hub:ORG/NAME) (default: imagenet).",
       help_in={"finetune": "With an architecture name: imagenet | none | a pretraining source NAME or NAME:PATH | "
                            "PATH (default: imagenet).",
                "study plan": "Comma-separated: imagenet, none, pretraining sources (NAME or NAME:PATH; `chexcut "
                              "weights list`), state dict files. A source is run with the archs it fits (default: "
                              "imagenet,none)."}),
    _o("in_chans", "1 = grayscale input (first conv's RGB filters combined) (default: 3, or the --weights source's "
       "own).", bound=True),
    _o("pool", "How the head pools a transformer's last kept layer: token (the class token, default) or avg (the "
       "mean of the patch tokens), after the final norm; maps are always averaged."),
)

#: finetune's training settings (:class:`chexcut.training.config.TrainConfig`; None: the recipe's value). With
#: image_size, batch_size, precision, channels_last, compile, workers, device and resize (above) they are
#: :data:`TRAIN_OPTIONS`, what a study passes to every run.
TRAINING = (
    _o("recipe", "paper (Adam 1e-4, batch 16, 3 epochs, fp32) or fast (large batch, bf16, channels_last, compile, "
       "cosine) (default: paper)."),
    _o("epochs", "Passes over the training set (default: the recipe's).", bound=True, fills={"demo": "Demo"}),
    _o("lr", "Learning rate (default: the recipe's)."),
    _o("val_every", "Validate every N steps (and at each epoch end; default: the recipe's).", bound=True),
    _o("precise_bn", "Before each validation, re-estimate BatchNorm statistics on N training images (for short "
       "runs; 0 = off; a model without BatchNorm, such as a ViT, skips it with a note).", bound=True),
    _o("layer_decay", "Layer-wise learning-rate decay: layer k of L learns at lr x D^(L-k), the head at lr (timm's "
       "param_groups_layer_decay; usual for ViT fine-tuning, 0.65-0.75; off by default; timm families only)."),
    _o("adapt", "What is trained: full (every parameter), probe (the head on a frozen backbone), last:K (the last K "
       "kept blocks and the head) or lora:R (LoRA of rank R, alpha R, on the kept blocks' Linear and ungrouped Conv2d "
       "layers, and the head; needs chexcut[lora]; the model file holds the merged weights); frozen BatchNorm layers "
       "stay in eval mode (default: full).",
       help_in={"inspect": "List what this --adapt would train (full, probe, last:K or lora:R): trainable and total "
                           "parameters; for lora:R every layer LoRA adapts and every one it skips."}),
    _o("label_fraction", "Train on this share of the training patients, in (0, 1]: patients drawn in the seed's "
       "order (nested: for one seed the 1% are inside the 10%), each label keeping a positive where the data has "
       "one; recorded in the run's label_fraction.json (default: 1, all).",
       help_in={"probe": "Fit the probes on this share of the training patients, in (0, 1], drawn as finetune draws "
                         "them (recorded in probe.json; default: 1, all).",
                "study plan": "Every run's share of training patients (see --label-fractions for an axis)."}),
    _o("max_steps", "Stop after this many steps in all (the schedule is unchanged; --resume continues).",
       bound=True, on_resume=True),
    _o("log_every", "Log every N steps (default: 50).", bound=True),
    _o("resume", "Continue the run in this directory exactly where it stopped."),
    _o("track", _TRACK_HELP),
    _o("track_experiment", "MLflow experiment (default: chexcut; a study: its folder's name)."),
    _o("track_tag", "KEY=VALUE tag on the MLflow run (repeatable)."),
    Option("track_models", ("--track-models/--track-no-models",), "Upload best.safetensors to the tracking store.",
           default=True, help_in={"study plan": "With --track: upload each run's best model."}),
    _o("log_format", "rich (progress bar on stderr) or json (one object per line on stdout).", default="rich"),
)

#: What a study plans (:class:`chexcut.study.plan.Grid`, :class:`chexcut.study.plan.Slurm`) and how it runs.
STUDY = (
    _o("archs", "Comma-separated architectures (default: the 16 of the paper).", fills={"demo": "Demo"}),
    _o("drops", "Comma-separated drops (levels past an arch's blocks are skipped; default: 0,1,2).",
       fills={"demo": "Demo"}, help_in={"bench": "Comma-separated levels (default: all)."}),
    _o("seeds", "Comma-separated training seeds, one run per seed (default: 0)."),
    _o("adapts", "Comma-separated adaptations, a run each: finetune's --adapt values, e.g. probe,last:2,lora:8,full "
       "(default: full). last:K past the blocks a drop keeps is skipped."),
    _o("label_fractions", "Comma-separated shares of the training patients in (0, 1], a run each; for one seed the "
       "smaller budgets' patients are among the larger ones' (default: 1)."),
    _o("external", "External sets (SET:DIR or folders; repeatable or a comma list) every run is also evaluated on "
       "(all rows); `report` compares them with the internal results."),
    _o("bench", "Each run also measures its model's latency and throughput (bench.json; shown by report).",
       default=False),
    _o("slurm", "Also write study.sbatch (one array task per run).", default=False),
    _o("nodes", "With --slurm: nodes per run (torchrun with a c10d rendezvous on the first).", bound=True,
       fills="Slurm"),
    _o("gpus_per_task", "GPUs per Slurm task (torchrun when > 1; 0: a CPU partition, no GPU directive).", bound=True,
       fills="Slurm"),
    _o("cpus_per_task", "CPUs per Slurm task (default: none written, so the cluster's DefCpuPerGPU or partition "
       "default applies).", bound=True),
    _o("time", "Slurm time limit per task (e.g. 12:00:00); a run stopped by it resumes when requeued."),
    _o("partition", "Slurm partition."),
    _o("account", "Slurm account."),
    _o("mem", "Memory per node (e.g. 32G)."),
    _o("signal_before", "Seconds before the time limit that Slurm sends SIGTERM (the run checkpoints and the task is "
       "requeued; 0: none).", bound=True, fills="Slurm"),
    _o("requeue", "Preempted or timed-out tasks come back and resume.", switch=True, fills="Slurm"),
    _o("sbatch", "Any other #SBATCH directives, comma-separated (e.g. --qos=long,--constraint=a100)."),
    _o("jobs", "Runs at once (one GPU each when there are GPUs).", "-j", bound=True, default=1,
       help_in={"demo": "Runs at once (1: all in this process, no import per run)."}),
    _o("index", "The run at this 0-based position of the plan (a Slurm array's task id)."),
    _o("step", "all (finetune or resume, bench, evaluate) or finetune (each rank of a distributed launch).",
       default="all"),
    _o("launcher", "Start the finetune under this launcher, e.g. 'torchrun --standalone --nproc_per_node 4' "
       "(study.sbatch sets it)."),
    _o("watch", "Refresh every N seconds until Ctrl-C."),
    _o("n", "Number of images.", fills={"demo": "Demo"}, help_in={"phantom": "Number of images (default: 600)."}),
)

#: Outputs, and options of one command each.
OUTPUT = (
    _o("out", "Where to write.", "-o", required_in=("card", "datasets index", "ensemble", "export", "probe",
                                                     "study plan", "truncate"),
       help_in={"card": "The card's Markdown file (figures go to OUT_STEM_files/).",
                "datasets index": "The index CSV to write (- for stdout); never over a file of the set's folder.",
                "ensemble": "Folder for predictions.csv (the ensemble's) and eval.json.",
                "explain": "Folder for the overlays and contact sheets (default: explain).",
                "export": "ONNX file to write (.onnx), or with --format hub the folder.",
                "finetune": "Run directory to create.",
                "probe": "Folder for probe.json, probe.png and features/ (the cached features a later probe reuses).",
                "report": "Write report.md, results.csv, results.json and PNG plots here.",
                "study plan": "Study folder to write plan.json, run.sh, commands.txt into.",
                "truncate": "Model file to write (.safetensors)."}),
    _o("json", "Write the JSON to PATH, or - for stdout.", help_in={
        "bench": "Write the results to PATH (e.g. RUN_DIR/bench.json), or - for stdout.",
        "card": "Also write the card as JSON to PATH, or - for stdout.",
        "evaluate": "Write the evaluation JSON to PATH, or - for stdout.",
        "explain": "Write the listing (or with --check the checks) to PATH, or - for stdout.",
        "probe": "Also write probe.json to PATH, or - for stdout.",
        "report": "Write the report JSON to PATH, or - for stdout.",
        "study status": "Write the status JSON to PATH, or - for stdout."}),
    _o("quiet", "No progress output or table.", "-q", default=False),
    _o("force", "Overwrite an existing output file.", default=False, help_in={
        "export": "Overwrite an existing file (or replace the folder).",
        "finetune": "Start over in a --out that holds a finished or stopped run.",
        "study plan": "Plan over an existing study plan."}),
    _o("html", "Also write a self-contained HTML card here."),
    _o("format", "onnx (a graph with the preprocessing and sigmoid inside) or hub (a Hugging Face model folder: "
       "model.safetensors, timm's config.json, a model card) (default: onnx)."),
    _o("onnx", "With --format hub: the ONNX graph in the folder too (model.onnx).", default=False),
    _o("push", "With --format hub: upload the folder to the Hugging Face repository ORG/NAME (token: HF_TOKEN or "
       "`hf auth login`)."),
    _o("about", "YAML with what only the authors know: intended_use, intended_users, out_of_scope, limitations, "
       "reference_standard, annotators, ethics, funding, ...",
       help_in={"report": "With --out and one study: the model card's YAML (intended use, limitations, reference "
                          "standard, ...)."}),
    _o("all_labels", "Also write the set's own labels that a CheXpert label is mapped from (PadChest: 55 more "
       "columns).", default=False),
    _o("batch", "Batch sizes: latency at the smallest, throughput at the largest (default: 1,32)."),
    _o("threads", "CPU threads (torch.set_num_threads / ONNX Runtime's intra-op threads).", bound=True),
    _o("runtime", "torch | onnxruntime (the exported graph; default: torch)."),
    _o("max_time", "Seconds at most per measurement (default: 3)."),
    _o("limit", "At most this many images.", bound=True, default=16),
    _o("top", "Instead of --labels: each image's K most probable labels.", bound=True),
    _o("layer", "Block index (from `chexcut inspect`) (default: the last kept block)."),
    _o("check", "Pointing game (phantom data with --masks: every masked frontal image of the split, up to "
       "--check-limit) and the randomisation sanity check.", default=False),
    _o("check_limit", "At most this many images for the pointing game.", bound=True, default=2000),
    _o("masks", "Also write where each finding was drawn (masks/ PNGs and masks.csv), to score heatmaps.",
       default=False),
    _o("layout", "chexpert, or a published set's layout: nih, padchest (16-bit PNG), vinbigdata (DICOM), mimic.",
       default="chexpert"),
    _o("offline", "Never try the network for ImageNet weights.", default=False),
    _o("mirror", "A folder or http(s) URL serving the files by name (see `weights fetch --to`).",
       envvar="CHEXCUT_WEIGHTS_MIRROR"),
    Option("all", ("--all",), "Every supported architecture.", default=False),
    _o("paper", "Only the 16 architectures of the paper.", default=False),
    _o("to", "Write the files into this folder (a mirror to copy to an offline machine) instead of the caches."),
)

OPTIONS: tuple[Option, ...] = DATA + INFERENCE + STATISTICS + EVALUATION + MODEL + TRAINING + STUDY + OUTPUT

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: finetune's training settings (TrainConfig fields), in the order ``finetune --help`` lists them: what a study
#: passes to every run, and what --resume keeps (unless ``on_resume``).
TRAIN_OPTIONS: tuple[Option, ...] = tuple(BY_NAME[n] for n in (
    "recipe", "epochs", "batch_size", "lr", "image_size", "val_every", "precision", "channels_last", "compile",
    "workers", "precise_bn", "layer_decay", "adapt", "label_fraction", "max_steps", "log_every", "device", "resize"))


def given(**values) -> dict:
    """The values that were given (not None): keyword arguments for a settings object whose defaults apply to the
    rest (``Statistics(**given(ci=ci, level=level))``)."""
    return {k: v for k, v in values.items() if v is not None}
