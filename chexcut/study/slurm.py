"""How a study runs on Slurm: the resources asked for (:class:`Slurm`) and ``study.sbatch``, one array task per
planned run, each requeued and resumed when preempted or out of time."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chexcut.errors import ChexcutError


def slurm_seconds(time: str) -> int:
    """Slurm's time format in seconds: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days, _, rest = time.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + m * 60 + sec
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


@dataclass(frozen=True)
class Slurm:
    """How ``study.sbatch`` asks for resources. Nothing is written that the user did not ask for except what a
    study needs (one task per run, its GPUs, a warning signal and requeue), so the cluster's defaults apply:
    no ``--cpus-per-task`` unless given (DefCpuPerGPU or the partition's default decides)."""

    gpus_per_task: int = 1  # 0: a CPU partition (no GPU directive, no torchrun)
    nodes: int = 1
    extra: tuple[str, ...] = ()  # more #SBATCH directives, as given
    cpus_per_task: int | None = None
    time: str | None = None  # Slurm's time format: MM, HH:MM:SS, D-HH[:MM[:SS]]
    partition: str | None = None
    account: str | None = None
    mem: str | None = None  # e.g. 32G
    signal_before: int = 300  # seconds before the time limit Slurm sends SIGTERM to the script (0: none)
    requeue: bool = True

    def __post_init__(self):

        from chexcut.choices import check_bounds

        for name in ("gpus_per_task", "nodes", "cpus_per_task", "signal_before"):
            check_bounds(name, getattr(self, name))
        if self.time is not None and not re.fullmatch(r"([0-9]+-)?[0-9]+(:[0-9]+){0,2}", self.time):
            raise ChexcutError(f"--time {self.time!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS; ASCII digits)")
        if self.mem is not None and not re.fullmatch(r"[0-9]+[KMGT]?", self.mem):
            raise ChexcutError(f"--mem {self.mem!r} is not a Slurm size (e.g. 32G, 16000M)")
        if self.time is not None and self.signal_before and slurm_seconds(self.time) <= self.signal_before:
            raise ChexcutError(f"--time {self.time} ({slurm_seconds(self.time)} s) is not longer than --signal-before "
                               f"{self.signal_before}: Slurm would signal the task before it can work; give a longer "
                               f"--time or a smaller --signal-before")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
                raise ChexcutError(f"--{name} {value!r}: one name without spaces")
        for d in self.extra:
            if not re.fullmatch(r"--[A-Za-z][\w-]*(=\S+)?", d) or not d.isprintable():
                raise ChexcutError(f"--sbatch {d!r} is not one #SBATCH directive (--name or --name=VALUE, no spaces "
                                   f"or control characters)")

    def directives(self) -> list[str]:
        """The #SBATCH lines after the array and task layout (resources, time, signal, requeue, extras)."""
        out = [f"--{k}={v}" for k, v in (("cpus-per-task", self.cpus_per_task), ("time", self.time),
                                         ("partition", self.partition), ("account", self.account),
                                         ("mem", self.mem)) if v is not None]
        if self.signal_before:
            out.append(f"--signal=B:TERM@{self.signal_before}")
        if self.requeue:
            out += ["--requeue", "--open-mode=append"]
        return [f"#SBATCH {d}" for d in out + list(self.extra)]


def single_node_launcher(gpus: int) -> str:
    return f"torchrun --standalone --nproc_per_node {gpus}"


def sbatch_script(n: int, slurm: Slurm) -> str:
    """One array task per run (``chexcut study exec . --index $SLURM_ARRAY_TASK_ID``), single- or multi-node.
    The script holds no path: it runs in the study folder (sbatch's working directory, or the folder Slurm
    recorded the script in)."""
    gpus = slurm.gpus_per_task
    if slurm.nodes > 1:
        layout = [f"--nodes={slurm.nodes}", "--ntasks-per-node=1"] + ([f"--gpus-per-node={gpus}"] if gpus else [])
    else:
        layout = ["--ntasks=1"] + ([f"--gpus-per-task={gpus}"] if gpus else [])
    head = ["#!/usr/bin/env bash", "#SBATCH --job-name=chexcut-study", f"#SBATCH --array=0-{n - 1}",
            *[f"#SBATCH {d}" for d in layout], "#SBATCH --output=slurm-%A_%a.out",
            *slurm.directives(),
            "# One array task per run: `chexcut study exec . --index SLURM_ARRAY_TASK_ID` reads it from plan.json",
            "# (idempotent: done runs are skipped, interrupted ones resume from their checkpoint). Submit it as",
            "# `sbatch STUDY/study.sbatch` or from the study folder; slurm-*.out files land in sbatch's working folder."]
    if slurm.signal_before:
        head += [f"# --signal=B:TERM@{slurm.signal_before}: {slurm.signal_before} s before the time limit Slurm "
                 "signals this script, which passes",
                 "# SIGTERM to the run (it checkpoints the step it is at and exits 143) and requeues the task; "
                 "scancel and",
                 "# preemption signal every process, and the run checkpoints the same way (a cancelled task is "
                 "not requeued)."]
    body = ["set -u", _FIND_STUDY, "CHEXCUT=${CHEXCUT:-chexcut}"]
    if slurm.nodes > 1:
        nproc = max(gpus, 1)
        body += [f"# Multi-node: each run trains on {slurm.nodes} nodes x {nproc} processes; the rendezvous is on "
                 "the first node.",
                 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "port=$((29500 + SLURM_ARRAY_TASK_ID % 1000))",
                 f'launcher="srun torchrun --nnodes {slurm.nodes} --nproc-per-node {nproc} --rdzv-backend c10d '
                 '--rdzv-endpoint $head:$port --rdzv-id chexcut-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID"']
    elif gpus > 1:
        body.append(f'launcher="{single_node_launcher(gpus)}"')
    else:
        body.append('launcher=""')
    return "\n".join(head + body) + "\n" + _SBATCH_RUN


# sbatch's working folder is where it was called; when that is not the study, the folder of the script as Slurm
# recorded it (scontrol's Command=) is. Either way the path is read at run time, never written into the script.
_FIND_STUDY = r"""if [ ! -f plan.json ]; then
  script=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
  [ -n "$script" ] && cd "$(dirname "$script")" 2>/dev/null
fi
[ -f plan.json ] || { echo "chexcut-study: no plan.json in $(pwd): sbatch --chdir STUDY STUDY/study.sbatch" >&2; exit 2; }"""


# The task's run goes in a background subshell so that the script's trap runs at once when SIGTERM comes
# (the subshell outlives the signal: it waits for its command, which does the stopping); the script waits for it
# before it decides whether to requeue (only a task still RUNNING, i.e. stopped ahead of its time limit, never
# a cancelled one).
_SBATCH_RUN = r"""pgid=$(ps -o pgid= $$ | tr -d ' ')
stopping=0
on_term() {
  trap '' TERM; stopping=1
  echo "chexcut-study: SIGTERM: the run checkpoints and stops" >&2
  if [ "$pgid" = "$$" ]; then kill -TERM -- "-$pgid" 2>/dev/null; else pkill -TERM -P "$child" 2>/dev/null; fi
}
trap on_term TERM
( trap ':' TERM; if [ -n "$launcher" ]; then $CHEXCUT study exec . --index "$SLURM_ARRAY_TASK_ID" --launcher "$launcher"
  else $CHEXCUT study exec . --index "$SLURM_ARRAY_TASK_ID"; fi ) &
child=$!
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
task="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-}}_${SLURM_ARRAY_TASK_ID}"
if [ "$stopping" = 1 ] && [ "$(squeue -h -j "${SLURM_JOB_ID:-0}" -o %T 2>/dev/null)" = RUNNING ]; then
  echo "chexcut-study: requeueing $task: it resumes from its checkpoint" >&2
  scontrol requeue "$task"
fi
exit $rc
"""


#: plan.json's run entries: each field and its type (the executor reads nothing else of a run).
