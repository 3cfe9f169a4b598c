#!/usr/bin/env bash
# Starts a real single-node SLURM (Debian's slurm-wlm + munge) on this machine for the tests:
# slurmctld and slurmd as root on localhost, the configuration in $SLURM_DIR (default
# /tmp/slurm-ci). Prints the SLURM_CONF to export. Safe to run again: a cluster running this
# configuration is kept, one running another is restarted with this one.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm-ci}
conf="$SLURM_DIR/slurm.conf"
for tool in slurmctld slurmd munged sbatch; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: apt-get install slurm-wlm munge" >&2; exit 1; }
done
mkdir -p "$SLURM_DIR"/{state,spool,log} /run/munge
host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf.new" <<CONF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (default 120), and is then
# started by the next scheduling pass: every sched_interval seconds (default 60)
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=1
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=30
JobRequeue=1
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
if cmp -s "$conf.new" "$conf" && SLURM_CONF="$conf" timeout 10 sinfo -h -o %T 2>/dev/null \
    | grep -qE "idle|mixed|alloc"; then
  rm "$conf.new"; echo "$conf"; exit 0  # this configuration is up already
fi
mv "$conf.new" "$conf"
chown munge:munge /run/munge 2>/dev/null || true
[ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
pgrep -x munged >/dev/null || runuser -u munge -- munged 2>/dev/null || munged --force
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
  if SLURM_CONF="$conf" sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
    echo "$conf"; exit 0
  fi
  sleep 1
done
echo "error: SLURM did not come up; see $SLURM_DIR/log" >&2
exit 1
