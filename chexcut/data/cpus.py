"""The CPUs this process may use (its affinity, Slurm's allocation) and the defaults that follow from them:
DataLoader workers and torch's threads. No torch import at module level."""

from __future__ import annotations

DEFAULT_WORKERS = 4  # decoding processes (or cache-reading threads) when --workers is not given, at most the CPUs


def allocated_cpus() -> int:
    """The CPUs this process may use: its affinity mask (what cgroups, taskset and Slurm's binding allow),
    and no more than ``SLURM_CPUS_PER_TASK`` when Slurm says so."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def resolve_workers(workers: int | None) -> int:
    """An explicit count wins; the default follows the allocation (never more workers than CPUs)."""
    return min(DEFAULT_WORKERS, allocated_cpus()) if workers is None else workers


def limit_threads() -> None:
    """torch's intra-op threads within the allocation (unless OMP_NUM_THREADS chose): a 4-CPU Slurm task on a
    64-core node must not start 64 threads per process."""
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > allocated_cpus():
        torch.set_num_threads(allocated_cpus())
