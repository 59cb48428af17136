#!/usr/bin/env bash
# A study on a real one-node Slurm (Debian's slurmctld, slurmd, munge; 2 CPUs, 2 gres GPUs on dummy device
# files), as .ci/run runs it after the test suite:
#   plan a 3-run phantom study with the default `study plan --slurm` into a folder whose name holds $(...) and a
#   backtick (data, never code), sbatch it from outside that folder (the array must start, not pend),
#   scancel it mid-training (every interrupted run: a checkpoint at the step it stopped, state.json
#   "interrupted", exit 143 in its log, no traceback), sbatch it again (every run finishes, no metrics row
#   twice), then `study status --json` calls every run done and `chexcut report` works.
# Without Slurm it installs Debian's packages when it runs as root with apt; otherwise it says why and skips.
# The cluster lives in a temporary folder (its own ports, spool and state) and its daemons are stopped on exit.
#   usage: bash tests/integration/slurm.sh [PYTHON]      (PYTHON: the interpreter with chexcut's dependencies)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${1:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute: the script works in a temporary folder
start=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "slurm.sh: installing slurmctld slurmd slurm-client munge (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null; }
  else
    echo "slurm.sh: SKIPPED: no Slurm here and no root apt-get to install it"; exit 0
  fi
fi

D="$(mktemp -d /tmp/chexcut-slurm.XXXXXX)"
H="$(hostname -s)"
MUNGE_STARTED=0
cleanup() {
  set +e
  [ -n "${SLURM_CONF:-}" ] && scancel --quiet -u "$(id -un)" 2>/dev/null
  pkill -f -- "-f $D/slurm.conf"    # this cluster's daemons: started with -f and its own configuration
  sleep 2
  pkill -9 -f -- "-f $D/slurm.conf"
  [ "$MUNGE_STARTED" = 1 ] && pkill -x munged
  rm -rf "$D"
}
trap cleanup EXIT

mkdir -p "$D/spool/ctld" "$D/spool/d" "$D/log"
mknod "$D/gpu0" c 1 3 && mknod "$D/gpu1" c 1 3   # two "GPUs": character devices like /dev/null
cat > "$D/slurm.conf" <<EOF
ClusterName=chexcut-ci
SlurmctldHost=$H
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16917
SlurmdPort=16918
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
MinJobAge=600
GresTypes=gpu
NodeName=$H CPUs=$(nproc) RealMemory=2000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu[0-1]\n' "$H" "$D" > "$D/gres.conf"
export SLURM_CONF="$D/slurm.conf"

if ! munge -n >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged && MUNGE_STARTED=1
  sleep 1
fi
slurmctld -f "$SLURM_CONF"
sleep 1
slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o "%P %T %G" | grep -q idle || { echo "slurm.sh: FAILED: the node did not come up"; tail -5 "$D"/log/*; exit 1; }
echo "slurm.sh: one-node Slurm $(sinfo --version | cut -d' ' -f2) up ($(nproc) CPUs, gres gpu:2)"

export PYTHONPATH="$REPO" CHEXCUT="$PY -m chexcut"
cd "$D"
$CHEXCUT phantom ph --n 240 --image-size 40 --quiet
export S='study $(touch pwned) `touch pwned2`'   # the study folder's name: data, never code
$CHEXCUT study plan --data ph --out "$S" --archs resnet18 --weights none --drops 1,2,3 --bootstrap 100 --slurm \
  --epochs 3 --image-size 32 --batch-size 8 --val-every 5 --log-every 1 >/dev/null 2>&1
job=$(sbatch --parsable "$S/study.sbatch")
# the default plan's array starts (it used to pend for ever on --cpus-per-task=8)
for _ in $(seq 60); do [ "$(squeue -h -j "$job" -t R | wc -l)" -ge 1 ] && break; sleep 1; done
[ "$(squeue -h -j "$job" -t R | wc -l)" -ge 1 ] || { echo "slurm.sh: FAILED: the array did not start: $(squeue -h -j "$job" -o '%i %T %r')"; exit 1; }
# scancel once two runs have checkpointed, mid-training
for _ in $(seq 240); do [ "$(ls "$S"/runs/*/last.ckpt 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.5; done
sleep 2
scancel "$job"
for _ in $(seq 90); do [ -z "$(squeue -h -j "$job")" ] && break; sleep 1; done
"$PY" - <<'EOF'
import json, os, pathlib, torch
runs = [d for d in sorted((pathlib.Path(os.environ["S"]) / "runs").iterdir()) if (d / "last.ckpt").is_file()]
assert len(runs) >= 2, "fewer than two runs had checkpointed"
interrupted = 0
for d in runs:
    state = json.loads((d / "state.json").read_text())
    step = torch.load(d / "last.ckpt", weights_only=True)["step"]
    log = (d / "log.txt").read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-2000:]
    if state["status"] == "interrupted":
        interrupted += 1
        assert state["step"] == step, (d.name, state, step)
        assert "terminated (SIGTERM): checkpoint at step" in log, log[-500:]
    else:
        assert state["status"] == "finished", (d.name, state)
assert interrupted >= 1, "scancel interrupted no run"
print(f"slurm.sh: scancel: {interrupted} runs interrupted, each with its checkpoint at the step it stopped")
EOF
job2=$(sbatch --parsable "$S/study.sbatch")
for _ in $(seq 600); do [ -z "$(squeue -h -j "$job2")" ] && break; sleep 1; done
$CHEXCUT study status "$S" --json status.json
"$PY" - <<'EOF'
import collections, json, os, pathlib
st = json.loads(pathlib.Path("status.json").read_text())
assert [r["status"] for r in st["runs"]] == ["done"] * 3, st
for d in (pathlib.Path(os.environ["S"]) / "runs").iterdir():
    steps = [ln.split(",")[0] for ln in (d / "metrics.csv").read_text().splitlines()[1:]]
    twice = [s for s, n in collections.Counter(steps).items() if n > 1]
    assert not twice, (d.name, twice)
print("slurm.sh: resubmitted: 3 of 3 runs done, no metrics row twice")
EOF
$CHEXCUT report "$S" --out report >/dev/null
[ -f report/report.md ] || { echo "slurm.sh: FAILED: no report"; exit 1; }
if [ -n "$(find "$D" -name 'pwned*')" ]; then echo "slurm.sh: FAILED: a folder name was executed"; exit 1; fi
echo "slurm.sh: passed in $(( $(date +%s) - start )) s"
