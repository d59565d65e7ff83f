#!/usr/bin/env bash
# Slurm launch check: `srun --mpi=pmix` runs `sft` and `train` as 2 ranks and writes the same
# bytes as `mpirun -np 2` (both are the data-parallel path of docs/distributed.md). Not in CI:
# it starts Slurm daemons (a one-node cluster of this machine, its own config in a temp dir),
# which a CI machine should not carry. Needs root on Debian/Ubuntu (apt-get installs slurmctld,
# slurmd, slurm-client and munge when missing) and a release build with MPI:
#   cargo build --release --features mpi
# Usage: scripts/srun-check.sh [BIN]   (default target/release/mmr1-fast)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/mmr1-fast}")
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release --features mpi" >&2; exit 2; }
ldd "$bin" | grep -q libmpi || { echo "$bin has no MPI: build with --features mpi" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
fi
work=$(mktemp -d /tmp/srun-check.XXXX)
host=$(hostname -s)
mkdir -p "$work"/{ctld,d,log}
export SLURM_CONF=$work/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=check
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=$work/ctld
SlurmdSpoolDir=$work/d
SlurmctldPidFile=$work/ctld.pid
SlurmdPidFile=$work/d.pid
SlurmctldLogFile=$work/log/ctld.log
SlurmdLogFile=$work/log/d.log
SlurmUser=root
ReturnToService=2
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
# munge: the authentication Slurm's daemons and srun share (a key of this machine).
if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || {
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    }
    mkdir -p /run/munge && chown munge:munge /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged
fi
cleanup() {
    [ -f "$work/d.pid" ] && kill "$(cat "$work/d.pid")" 2>/dev/null || true
    [ -f "$work/ctld.pid" ] && kill "$(cat "$work/ctld.pid")" 2>/dev/null || true
}
trap cleanup EXIT
slurmctld -i
slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || { echo "slurm did not come up; logs in $work/log" >&2; exit 1; }

cd "$work"
export RAYON_NUM_THREADS=1
"$bin" train --demo text --prepare-only --out demo >/dev/null
head -64 demo/demo/sft.jsonl >sft64.jsonl
mpirun_() { mpirun --allow-run-as-root --oversubscribe -np 2 "$@"; }
srun_() { srun -n 2 --mpi=pmix "$@"; }
sft=(sft --model demo/demo/model --data sft64.jsonl --epochs 1 --batch-size 16
    --micro-batch-tokens 512 --lr 1e-3 --device cpu --seed 3 --save-every 2)
train=(train --config demo/config.toml --set rl.steps=3 --set sft.epochs=1
    --set eval.max_items=16 --set model.device=cpu)
fail=0
for launcher in mpirun_ srun_; do
    $launcher "$bin" "${sft[@]}" --out "sft-$launcher" 2>"sft-$launcher.log"
    grep -q "2 ranks" "sft-$launcher.log" || { echo "$launcher sft: not 2 ranks" >&2; fail=1; }
    $launcher "$bin" "${train[@]}" --out "train-$launcher" 2>"train-$launcher.log"
done
for f in sft-%s/model.safetensors sft-%s/checkpoint-2/optimizer.safetensors \
    train-%s/sft/checkpoint-150/model.safetensors train-%s/rl/checkpoint-3/model.safetensors \
    train-%s/rl/checkpoint-3/optimizer.safetensors; do
    a=$(printf "$f" mpirun_) b=$(printf "$f" srun_)
    if cmp -s "$a" "$b"; then echo "same bytes: ${a#*/} (mpirun -np 2 vs srun -n 2 --mpi=pmix)"
    else echo "DIFFERENT: $a vs $b" >&2; fail=1; fi
done
[ $fail = 0 ] && echo "srun check passed ($work)" || echo "srun check FAILED ($work)" >&2
exit $fail
