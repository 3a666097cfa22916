"""Use the resources a job was given (threads, GPUs) rather than assuming a machine."""
from __future__ import annotations

import os

import torch


def use_job_threads(threads: int | None) -> int:
    """Pin torch (and BLAS) to the job's thread count; SLURM's CPU allocation wins if smaller."""
    n = int(threads or 1)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if slurm and slurm.isdigit():
        n = min(n, int(slurm))
    n = max(1, n)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
