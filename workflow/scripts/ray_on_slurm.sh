#!/usr/bin/env bash
# Run a Ray driver (verl's main_ppo) on a multi-node SLURM allocation:
#   ray_on_slurm.sh <gpus_per_node> -- <driver command ...>
# Starts a Ray head on the first node of the allocation and one Ray worker on every other
# node (srun --nodes=1 --ntasks=1 -w <node> ray start ... --block), waits until the cluster
# has all its GPUs, runs the driver on this (the first) node with RAY_ADDRESS set, and stops
# the cluster when the driver exits (its exit status is this script's).
# Environment: RAY_PORT (6379), RAY_WAIT_S (600), RAY_HEAD_WAIT_S (10), RAY_CPUS_PER_NODE (SLURM_CPUS_ON_NODE).
# Exported variables (PYTHONPATH, VERL_USE_EXTERNAL_MODULES, TENSORBOARD_DIR) reach the Ray
# processes because srun passes the environment on (--export=ALL, SLURM's default).
set -euo pipefail

if [[ $# -lt 3 || "$2" != "--" ]]; then
  echo "usage: $0 <gpus_per_node> -- <driver command ...>" >&2
  exit 2
fi
gpus_per_node=$1
shift 2
: "${SLURM_JOB_NODELIST:?ray_on_slurm.sh runs inside a SLURM allocation (SLURM_JOB_NODELIST is not set)}"

# One array element per node. (verl's example writes nodes_array=("$nodes"), which makes a
# one-element array holding every name; mapfile splits on newlines as intended.)
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
nnodes=${#nodes[@]}
if (( nnodes < 1 )); then
  echo "ray_on_slurm.sh: no nodes in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST" >&2
  exit 1
fi
head_node=${nodes[0]}
port=${RAY_PORT:-6379}
cpus=${RAY_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"
echo "ray_on_slurm: $nnodes node(s) [${nodes[*]}], head $head_node ($RAY_ADDRESS), $gpus_per_node GPU(s) per node"

pids=()
cleanup() {
  for node in "${nodes[@]}"; do
    srun --nodes=1 --ntasks=1 -w "$node" ray stop --force >/dev/null 2>&1 || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

srun --nodes=1 --ntasks=1 -w "$head_node" --gpus-per-node="$gpus_per_node" \
  ray start --head --node-ip-address="$head_ip" --port="$port" \
  --num-cpus="$cpus" --num-gpus="$gpus_per_node" --block &
pids+=($!)
sleep "${RAY_HEAD_WAIT_S:-10}"
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" --gpus-per-node="$gpus_per_node" \
    ray start --address="$RAY_ADDRESS" --num-cpus="$cpus" --num-gpus="$gpus_per_node" --block &
  pids+=($!)
done

# Wait until every node's GPUs have joined the cluster.
want=$(( nnodes * gpus_per_node ))
deadline=$(( SECONDS + ${RAY_WAIT_S:-600} ))
until python - "$want" <<'EOF'
import sys, ray
ray.init(address="auto", logging_level="ERROR")
have = int(ray.cluster_resources().get("GPU", 0))
ray.shutdown()
sys.exit(0 if have >= int(sys.argv[1]) else 1)
EOF
do
  if (( SECONDS > deadline )); then
    echo "ray_on_slurm: the Ray cluster did not reach $want GPUs in ${RAY_WAIT_S:-600} s" >&2
    exit 1
  fi
  sleep 5
done
echo "ray_on_slurm: cluster up with $want GPUs; running: $*"

"$@"
