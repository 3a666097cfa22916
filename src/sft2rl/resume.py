"""Where a resumable run starts: the restart guard shared by local GRPO and verl GRPO.

Snakemake's rerun triggers decide *whether* a job runs; this guard decides only *where it
starts*, from what is in the run directory:

* checkpoints of an unfinished run whose content key (:func:`sft2rl.fingerprint.run_key`:
  init weights, data bytes, package source, parameters, library versions) equals this
  job's key: resume from the latest one (a job killed by OOM, preemption or a time limit);
* checkpoints of a *finished* run (its job completed and wrote ``COMPLETE``): Snakemake
  reruns a finished job only because something changed or a rerun was forced, so it
  trains from step 0;
* checkpoints under another key (a retrained init model at the same path, an edited
  reward, another parameter): removed, training starts from step 0.

Starting from step 0 clears the checkpoints, TensorBoard events and the other logs the
run appends to, so no stale step survives in a curve or a table.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from .fingerprint import changed_parts
from .io import write_json
from .logutil import LOG

KEY_FILE = "run_key.json"        # in <run>/checkpoints/
COMPLETE_FILE = "COMPLETE"       # in <run>/checkpoints/, written when the job finished


def prepare_run_dir(run_dir: str | Path, key: dict[str, Any], *, also_clear: Iterable[str] = ()) -> dict[str, Any]:
    """Make ``run_dir`` ready for a run under ``key``; returns ``{"resume": bool, "reason": str}``.

    ``resume`` True: ``<run>/checkpoints`` holds checkpoints of this very run, unfinished.
    Otherwise ``checkpoints/``, ``tensorboard/`` and ``also_clear`` (names in ``run_dir``) are gone.
    """
    run = Path(run_dir)
    ckpt = run / "checkpoints"
    key_file, complete = ckpt / KEY_FILE, ckpt / COMPLETE_FILE
    old = json.loads(key_file.read_text()) if key_file.is_file() else None
    if complete.exists():
        resume, reason = False, "the previous run of this job finished; Snakemake reran it: training from step 0"
    elif old is not None and old.get("key") == key["key"]:
        resume, reason = True, "checkpoints of this run (same inputs, code and parameters): resuming"
    elif ckpt.exists() or (run / "tensorboard").exists():
        resume = False
        reason = f"checkpoints of other inputs (changed: {', '.join(changed_parts(old, key))}): training from step 0"
    else:
        resume, reason = False, "new run"
    if not resume:
        for name in ("checkpoints", "tensorboard", *also_clear):
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    ckpt.mkdir(parents=True, exist_ok=True)
    write_json(key_file, key)
    LOG.info("run %s: %s", run, reason)
    return {"resume": resume, "reason": reason}


def discard_run_dir(run_dir: str | Path) -> None:
    """Delete a run directory whose run finished: its key first, so a job killed while the
    (possibly large) rest is being deleted leaves checkpoints under no key, which the next
    :func:`prepare_run_dir` clears instead of resuming from a half-deleted epoch."""
    run = Path(run_dir)
    (run / "checkpoints" / KEY_FILE).unlink(missing_ok=True)
    shutil.rmtree(run, ignore_errors=False)


def mark_complete(run_dir: str | Path) -> None:
    """Record that the job of ``run_dir`` finished (its outputs are written)."""
    path = Path(run_dir) / "checkpoints" / COMPLETE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("finished\n")


def planned_steps(n_rows: int, train_batch: int, epochs: int, total_steps: int | None) -> int:
    """GRPO steps a run must take: ``total_steps``, or ``epochs`` x full batches of the kept rows.

    The same number for both backends (verl's loop is set up to run exactly this many).
    """
    steps_per_epoch = n_rows // train_batch
    if steps_per_epoch == 0:
        raise ValueError(f"rl.train_batch = {train_batch} is larger than the train set ({n_rows} rows kept)")
    return int(total_steps) if total_steps else steps_per_epoch * int(epochs)
