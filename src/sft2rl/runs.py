"""Run names encode what varies, so each ablation point is its own Snakemake target.

* SFT run:  ``sft<N>_seed<S>``          (N sampled SFT rows, sample/training seed S)
* RL run:   ``rl-<init>-beta<b>-seed<s>`` (init: an SFT run name or ``base``)
* a model name for evaluation is ``base``, an SFT run or an RL run.
"""
from __future__ import annotations

import re

SFT_RE = r"sft\d+_seed\d+"
RL_RE = r"rl-(?:base|sft\d+_seed\d+)-beta\d+(?:\.\d+)?-seed\d+"
MODEL_RE = rf"(?:base|{SFT_RE}|{RL_RE})"
_RL = re.compile(r"rl-(?P<init>base|sft\d+_seed\d+)-beta(?P<beta>\d+(?:\.\d+)?)-seed(?P<seed>\d+)")
_SFT = re.compile(r"sft(?P<n>\d+)_seed(?P<seed>\d+)")


def fmt_beta(beta: float) -> str:
    return f"{float(beta):g}"


def sft_name(n: int, seed: int) -> str:
    return f"sft{int(n)}_seed{int(seed)}"


def rl_name(init: str, beta: float, seed: int) -> str:
    return f"rl-{init}-beta{fmt_beta(beta)}-seed{int(seed)}"


def parse_sft(name: str) -> dict[str, int]:
    m = _SFT.fullmatch(name)
    if not m:
        raise ValueError(f"not an SFT run name: {name!r} (expected sft<N>_seed<S>)")
    return {"n": int(m["n"]), "seed": int(m["seed"])}


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
    raise ValueError(f"unknown model name {name!r}: expected base, sft<N>_seed<S> or rl-<init>-beta<b>-seed<s>")
