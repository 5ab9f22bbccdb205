#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian's slurm-wlm and munge), for testing the
# `slurm` Snakemake profile against a real scheduler.  Run as root.
#
#   workflow/slurm/local-cluster.sh start   # installs the packages if missing, starts munged, slurmctld, slurmd
#   workflow/slurm/local-cluster.sh env     # prints `export SLURM_CONF=...` for the client tools
#   workflow/slurm/local-cluster.sh stop    # cancels its jobs and stops the daemons
#
# Everything it writes lives under $SOFTREPRO_SLURM_DIR (default /tmp/softrepro-slurm): the
# configuration, state, spool and logs.  One partition, `local`, holds the one node with this
# machine's cores and memory; accounting is off (the profile's plugin reads job states with squeue).
set -euo pipefail

DIR=${SOFTREPRO_SLURM_DIR:-/tmp/softrepro-slurm}
CONF=$DIR/slurm.conf
NODE=softrepro-node

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "local-cluster.sh: run as root (it installs packages and starts daemons)" >&2; exit 2; fi
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
  echo "installing slurm-wlm and munge (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  echo "local-cluster.sh: munged did not come up" >&2; exit 1
}

write_conf() {
  local cpus mem host
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo)
  host=$(hostname -s)
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat > "$CONF" <<EOF
ClusterName=softrepro-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=3600
MpiDefault=none
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Job steps (srun inside a batch job) read the default configuration path, not SLURM_CONF: link
# ours there, unless the machine already has a configuration of its own, which is left alone.
link_default_conf() {
  mkdir -p /etc/slurm
  if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  elif ! cmp -s /etc/slurm/slurm.conf "$CONF"; then
    echo "local-cluster.sh: /etc/slurm/slurm.conf exists and is not ours; refusing to run a test cluster on a configured machine" >&2
    exit 1
  fi
}

start() {
  need_root
  install_packages
  start_munge
  write_conf
  link_default_conf
  export SLURM_CONF=$CONF
  pgrep -f "slurmctld -f $CONF" >/dev/null || slurmctld -f "$CONF"
  pgrep -f "slurmd -f $CONF" >/dev/null || slurmd -f "$CONF" -N "$NODE"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "SLURM is up: $(sinfo -h -o '%P %D %C %T')" >&2
      return
    fi
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "local-cluster.sh: the node did not become idle; see $DIR/log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  export SLURM_CONF=$CONF
  scancel --quiet --user root >/dev/null 2>&1 || true
  for pat in "slurmd -f $CONF" "slurmctld -f $CONF"; do pkill -f "$pat" 2>/dev/null || true; done
  for _ in $(seq 30); do pgrep -f "slurm.*-f $CONF" >/dev/null || break; sleep 0.2; done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ]; then rm -f /etc/slurm/slurm.conf; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
