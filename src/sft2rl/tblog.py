"""Reading TensorBoard event files (the figures and the verl export read training curves).

Imports tensorboard lazily and nothing of ours that is heavy, so a rule that reads curves
does not depend on the plotting code.
"""
from __future__ import annotations

import os
from pathlib import Path


def read_scalars(tb_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of one TensorBoard directory: ``{tag: [(step, value), ...]}``.

    Event files are read in name (= creation time) order, TensorBoard's purge of orphaned
    steps after a restart is honoured, and for a step logged more than once the last event
    read wins. Steps come back sorted. A missing or empty directory gives ``{}``.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in tb_dir.iterdir()):
        return {}
    acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0}, purge_orphaned_data=True)
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags().get("scalars", []):
        by_step: dict[int, float] = {}
        for ev in acc.Scalars(tag):  # in load order: a later duplicate overwrites
            by_step[int(ev.step)] = float(ev.value)
        out[tag] = sorted(by_step.items())
    return out
