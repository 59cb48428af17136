"""How long a user waits for `chexcut --help` and `chexcut inspect resnet50` (targets: 0.3 s; inspect cold
within 4x of --help, answered from the shipped anatomy without torch), and for a cold inspect of one architecture
of every family (ViT, DINOv2, Swin, ConvNeXt included; target under 1 s).

    python benchmarks/cli_latency.py [--repeat 5]

Prints the median wall time of each, measured in this one run, and how many modules
`--help` imported (it must not import torch).
"""

import argparse
import statistics
import subprocess
import sys
import time


def wall(args, repeat, cold=False):
    import os
    import tempfile

    times = []
    for _ in range(repeat):
        env = dict(os.environ)
        if cold:  # an empty anatomy cache: the full torch import + meta-device probe
            env["CHEXCUT_CACHE"] = tempfile.mkdtemp()
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chexcut", *args], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    n = ap.parse_args().repeat
    baseline = wall_python(n)
    help_t = wall(["--help"], n)
    cold_t = wall(["inspect", "resnet50"], n, cold=True)
    inspect_t = wall(["inspect", "resnet50"], n)
    other_cold = wall(["inspect", "resnet50", "--image-size", "288"], n, cold=True)
    other_warm = wall(["inspect", "resnet50", "--image-size", "288"], n)
    # one architecture of every family, cold, at its default size (ViT-B/16 at 320 px: the example)
    families = {}
    from chexcut.models.registry import REGISTRY

    for a in REGISTRY.values():
        families.setdefault(id(a.family), a.name)
    family_cold = {name: wall(["inspect", name], n, cold=True) for name in families.values()}
    torch_imported = subprocess.run(
        [sys.executable, "-c", "import sys; from chexcut.cli import app; from typer.testing import CliRunner; "
         "CliRunner().invoke(app, ['--help']); print('torch' in sys.modules)"],
        capture_output=True, text=True).stdout.strip()
    print(f"python startup            {baseline:6.3f} s")
    print(f"chexcut --help            {help_t:6.3f} s   (target < 0.3 s; torch imported: {torch_imported})")
    print(f"chexcut inspect resnet50  {cold_t:6.3f} s   cold: empty cache, shipped anatomy "
          f"({cold_t / help_t:.1f}x --help; target within 4x)")
    print(f"chexcut inspect resnet50  {inspect_t:6.3f} s   warm")
    print(f"inspect --image-size 288  {other_cold:6.3f} s   cold: not shipped, torch import + meta-device probe")
    print(f"inspect --image-size 288  {other_warm:6.3f} s   warm: disk cache")
    worst = max(family_cold, key=family_cold.get)
    print(f"inspect, cold, one arch of each of {len(family_cold)} families: slowest {worst} {family_cold[worst]:.3f} s "
          f"(target < 1 s); " + ", ".join(f"{k} {v:.2f}" for k, v in family_cold.items()))


def wall_python(n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    main()
