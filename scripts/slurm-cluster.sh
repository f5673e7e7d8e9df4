#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the launcher tests (tests/tests/slurm.rs) and
# for trying logo under Slurm by hand: Debian's slurm-wlm, run as root, no munge
# (AuthType=auth/none, CredType=cred/none), processes tracked by /proc (proctrack/linuxproc),
# no task plugin. Every file (config, state, spool, logs, pids) lives under DIR; the ports are
# chosen free at start.
#
#   scripts/slurm-cluster.sh install        # apt-get install slurm-wlm (once; ~1 minute)
#   scripts/slurm-cluster.sh start DIR      # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-cluster.sh stop DIR
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
install)
    if ! command -v slurmctld >/dev/null; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
        { $sudo apt-get install -y -q slurm-wlm || { $sudo apt-get update -q && $sudo apt-get install -y -q slurm-wlm; }; } >/dev/null
    fi
    slurmctld -V
    ;;
start)
    dir=$(realpath -m "${2:?$(usage)}")
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=logo
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # Ready when the node is idle.
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$SLURM_CONF"
            exit 0
        fi
        sleep 0.5
    done
    echo "slurm-cluster: the node did not become idle; logs in $dir/log" >&2
    sinfo >&2 || true
    exit 1
    ;;
stop)
    dir=$(realpath -m "${2:?$(usage)}")
    for d in slurmd slurmctld; do
        if [ -f "$dir/$d.pid" ]; then
            kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
        fi
    done
    for d in slurmd slurmctld; do
        for _ in $(seq 1 40); do
            [ -f "$dir/$d.pid" ] && kill -0 "$(cat "$dir/$d.pid")" 2>/dev/null || break
            sleep 0.25
        done
    done
    ;;
*) usage ;;
esac
