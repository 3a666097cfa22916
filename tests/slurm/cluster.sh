#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the SLURM profile tests
# (tests/test_slurm.py, profile tests/slurm/profile/). Debian's slurm-wlm, as root.
#
#   tests/slurm/cluster.sh up       install (apt) if needed, write /etc/slurm/slurm.conf,
#                                   start slurmctld + slurmd, wait until the node is idle
#   tests/slurm/cluster.sh down     cancel our jobs, stop the daemons (by PID, pid files)
#   tests/slurm/cluster.sh status   daemons, sinfo, squeue; exit 0 when the node answers
#
# `up` is idempotent: a running cluster with the same config is left alone; a changed
# config restarts it. The config goes to /etc/slurm/slurm.conf (the default path),
# because the executor's job step strips SLURM_CONF from the environment. A slurm.conf
# that this script did not write is never touched (set SFT2RL_SLURM_FORCE=1 to override).
#
# Choices (why):
#   AuthType=auth/none + CredType=cred/none when Debian's build ships the plugins
#     (bookworm's 22.05 does): no munged to run. SFT2RL_SLURM_AUTH=munge forces MUNGE.
#   select/cons_tres + CR_Core_Memory, DefMemPerCPU: small jobs share the node.
#   MinJobAge=600: finished jobs stay visible to squeue (status command without
#     accounting) for 10 min, far above 3 x the executor's first status-check delay.
#   accounting_storage/none, jobacct_gather/none: no slurmdbd (so no sacct).
#   proctrack/linuxproc, task/none: no cgroups in a container.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by sft2rl tests/slurm/cluster.sh"
STATE=${SFT2RL_SLURM_STATE:-/var/lib/sft2rl-slurm}
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid
MUNGE_PID=$STATE/munged.pid
PARTITION=${SFT2RL_SLURM_PARTITION:-debug}
MIN_JOB_AGE=${SFT2RL_SLURM_MIN_JOB_AGE:-600}
UP_TIMEOUT=${SFT2RL_SLURM_UP_TIMEOUT:-60}
PLUGINDIR=$(dirname "$(ls /usr/lib/*/slurm-wlm/auth_munge.so 2>/dev/null | head -1)" 2>/dev/null || true)

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

short_host() { local h; h=$(hostname -s 2>/dev/null || uname -n); echo "${h%%.*}"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

alive() { # alive PIDFILE -> 0 if the process in it runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
  command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d / no systemd in containers: the packages' own service starts fail
  # harmlessly; we start the daemons ourselves below.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  PLUGINDIR=$(dirname "$(ls /usr/lib/*/slurm-wlm/auth_munge.so | head -1)")
}

auth_kind() {
  if [ -n "${SFT2RL_SLURM_AUTH:-}" ]; then echo "$SFT2RL_SLURM_AUTH"; return; fi
  if [ -e "$PLUGINDIR/auth_none.so" ] && [ -e "$PLUGINDIR/cred_none.so" ]; then echo none; else echo munge; fi
}

node_line() {
  # Hardware as slurmd sees it, capped to the CPUs this process may use (nproc).
  local host=$1 hw cpus nproc_ mem
  hw=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  nproc_=$(nproc)
  # leave ~5% of the memory to the OS and the daemons
  mem=$(( mem * 95 / 100 ))
  if [ "$cpus" = "$nproc_" ]; then
    local topo
    topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
    echo "NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus $topo RealMemory=$mem State=UNKNOWN"
  else
    echo "NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$nproc_ RealMemory=$mem State=UNKNOWN"
  fi
}

write_conf() { # write_conf FILE
  local host auth nl cpus mem defmem
  host=$(short_host)
  auth=$(auth_kind)
  nl=$(node_line "$host")
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$nl")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$nl")
  # jobs that ask for no memory get an equal share per CPU, at most 2 GB
  defmem=$(( mem / cpus )); [ "$defmem" -gt 2048 ] && defmem=2048
  cat >"$1" <<EOF
$MARK
# A one-node test cluster on localhost. Do not use on a real cluster.
ClusterName=sft2rl
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/$auth
CredType=cred/$auth
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
SlurmdParameters=config_overrides
$nl
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  alive "$MUNGE_PID" && return 0
  [ -s /etc/munge/munge.key ] || {
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
  }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$MUNGE_PID"
}

stop_pid() { # stop_pid PIDFILE NAME
  local f=$1 name=$2 pid i
  alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "$name did not stop, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1 | tr -d '*~#'; }

wait_idle() {
  local host state i
  host=$(short_host)
  for i in $(seq 1 $((UP_TIMEOUT * 2))); do
    state=$(node_state || true)
    case "$state" in
      idle|mixed|allocated|completing) log "node $host is $state"; return 0 ;;
      down*|drain*|drained|fail*)
        # a restarted slurmd under ReturnToService=2 comes back by itself; help it along
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  log "node did not become idle in ${UP_TIMEOUT}s (state: '${state:-no answer}')"
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  return 1
}

cmd_up() {
  need_root
  install_packages
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/slurmd"
  if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF" && [ -z "${SFT2RL_SLURM_FORCE:-}" ]; then
    die "$CONF exists and was not written by this script; refusing to overwrite (SFT2RL_SLURM_FORCE=1 to do it)"
  fi
  local new
  new=$(mktemp)
  write_conf "$new"
  if [ -e "$CONF" ] && cmp -s "$new" "$CONF" && alive "$CTLD_PID" && alive "$SLURMD_PID"; then
    rm -f "$new"
    log "already up"
  else
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
    install -m 644 "$new" "$CONF"
    rm -f "$new"
    [ "$(auth_kind)" = munge ] && start_munge
    log "starting slurmctld and slurmd ($(grep -E '^(NodeName|AuthType)' "$CONF" | tr '\n' ' '))"
    # -c: start from a clean state (no jobs or node states of an earlier run)
    slurmctld -c
    slurmd
  fi
  wait_idle
}

cmd_down() {
  need_root
  if alive "$CTLD_PID"; then
    # cancel what is left of our test jobs, so no slurmstepd outlives slurmd
    squeue -h -o '%i' 2>/dev/null | xargs -r scancel 2>/dev/null || true
    local i
    for i in $(seq 1 20); do [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
  stop_pid "$MUNGE_PID" munged
  log "down"
}

cmd_status() {
  local rc=0
  for d in slurmctld:$CTLD_PID slurmd:$SLURMD_PID munged:$MUNGE_PID; do
    local name=${d%%:*} f=${d#*:}
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: not running"; fi
  done
  if sinfo >/dev/null 2>&1; then
    sinfo
    squeue
  else
    echo "sinfo: no answer"
    rc=1
  fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
