"""Studies: plan (local, Slurm), run, report."""
