"""Run names encode what varies, so each ablation point is its own Snakemake target.

* SFT run:  ``sft<N>_seed<S>``          (N sampled SFT rows, sample/training seed S), or
            ``sft<N>_seed<S>_<style>``  (the embedded world's SFT rows in ``style``: the style ablation)
* RL run:   ``rl-<init>-beta<b>-seed<s>`` (init: an SFT run name or ``base``)
* a model name for evaluation is ``base``, an SFT run or an RL run.
"""
from __future__ import annotations

import re

STYLES = ("hedge_only", "always_block")  # sft2rl.tasks.qa.world.SFT_STYLES (not imported: DAG-time, no deps)
_STYLE = "(?:" + "|".join(STYLES) + ")"
SFT_RE = rf"sft\d+_seed\d+(?:_{_STYLE})?"
RL_RE = rf"rl-(?:base|{SFT_RE})-beta\d+(?:\.\d+)?-seed\d+"
MODEL_RE = rf"(?:base|{SFT_RE}|{RL_RE})"
_RL = re.compile(rf"rl-(?P<init>base|{SFT_RE})-beta(?P<beta>\d+(?:\.\d+)?)-seed(?P<seed>\d+)")
_SFT = re.compile(rf"sft(?P<n>\d+)_seed(?P<seed>\d+)(?:_(?P<style>{_STYLE}))?")


def fmt_beta(beta: float) -> str:
    return f"{float(beta):g}"


def sft_name(n: int, seed: int, style: str | None = None) -> str:
    return f"sft{int(n)}_seed{int(seed)}" + (f"_{style}" if style else "")


def rl_name(init: str, beta: float, seed: int) -> str:
    return f"rl-{init}-beta{fmt_beta(beta)}-seed{int(seed)}"


def parse_sft(name: str) -> dict:
    m = _SFT.fullmatch(name)
    if not m:
        raise ValueError(f"not an SFT run name: {name!r} (expected sft<N>_seed<S>[_<style>])")
    return {"n": int(m["n"]), "seed": int(m["seed"]), "style": m["style"]}


def parse_rl(name: str) -> dict:
    m = _RL.fullmatch(name)
    if not m:
        raise ValueError(f"not an RL run name: {name!r} (expected rl-<init>-beta<b>-seed<s>)")
    return {"init": m["init"], "beta": float(m["beta"]), "seed": int(m["seed"])}


def model_dir(name: str, base_dir: str) -> str:
    """The HF directory holding model ``name``."""
    if name == "base":
        return base_dir
    if _SFT.fullmatch(name):
        return f"results/models/{name}/merged"
    if _RL.fullmatch(name):
        return f"results/rl/{name}/final"
    raise ValueError(f"unknown model name {name!r}: expected base, sft<N>_seed<S>[_<style>] or rl-<init>-beta<b>-seed<s>")
