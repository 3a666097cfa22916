"""Rollout throughput: the lean engine (sft2rl.rollout) vs transformers' ``model.generate``.

At the GRPO batch shape of config.yaml (rl.train_batch prompts x rl.n rollouts, up to
rl.max_response_length new tokens, rl.temperature), one thread as a GRPO job has, on the
headline's SFT model and RL prompts when they are built (else a randomly initialised
model of the same shape). Repetitions are interleaved; the table gives response tokens per
second (median, min-max) and the share of the CPU's measured fp32 matmul rate that the
needed work (each distinct prompt prefilled once, then every response token) reaches. It also checks exactness and records it:

- greedy tokens identical to ``generate``;
- sampled tokens identical to ``generate`` for the same seed (the engine's ``match_generate``
  mode: multinomial draws, no row dropping; also timed);
- the engine's log-probs equal to a fresh forward pass to 1e-5 (fp32; relative to |log p|
  where that is above 1, absolute below).

    python bench/rollout.py            -> bench/results/rollout.json, rollout.csv
    python bench/rollout.py --quick --check   (CI: small model, exactness only; exit 1 if not exact)
    python bench/rollout.py --device cuda --dtype bf16   (a GPU: bench/gpu_check.py runs it so)

On a GPU the peak is the device's measured matmul rate in ``--dtype``, and exactness is
reported, not required: other kernels (``generate``'s attention, bf16 rounding) may pick
other tokens where two are nearly tied.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import REPO, interleaved, matmul_gflops, publish, tiny_model

DEFAULT_MODEL = REPO / "results/models/sft50_seed42/merged"
DEFAULT_DATA = REPO / "data/processed/rl/train.parquet"
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def device_matmul_gflops(device: str, dtype: str, threads: int, n: int = 4096, reps: int = 20) -> float:
    """The matmul rate the rollout is compared to: the CPU's fp32 rate with ``threads`` threads,
    or a GPU's measured rate in ``dtype``."""
    import time

    import torch

    if device == "cpu":
        return matmul_gflops(threads)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, DTYPES[dtype]))
    b = torch.randn(n, n, device=device, dtype=a.dtype)
    a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def load(model_path: str | None, data_path: str | None, n_prompts: int, quick: bool, device: str = "cpu",
         dtype: str = "fp32"):
    import torch

    from sft2rl.io import read_parquet_rows
    from sft2rl.model import load_model

    if model_path is None and DEFAULT_MODEL.is_dir() and not quick:
        model_path = str(DEFAULT_MODEL)
    if model_path:
        model, tok = load_model(model_path, torch.device(device), getattr(torch, DTYPES[dtype]))
        source = model_path
    else:
        model, tok = tiny_model(hidden=64 if quick else 128, layers=2 if quick else 4)
        model = model.to(device=device, dtype=getattr(torch, DTYPES[dtype]))
        source = "random init (no built model)"
    if data_path is None and DEFAULT_DATA.is_file() and not quick:
        data_path = str(DEFAULT_DATA)
    if data_path:
        prompts = [r["prompt"] for r in read_parquet_rows(data_path)[:n_prompts]]
    else:
        prompts = [[{"role": "system", "content": "You are a helpful proactive assistant."},
                    {"role": "user", "content": f"What is the capital of Land{i}? And what is {i} plus {i + 3}?"}]
                   for i in range(n_prompts)]
    return model.eval(), tok, prompts, source


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"


def flops_per_token(model, context: float) -> float:
    """Forward FLOPs of one token: 2 x every matmul weight (LM head included) + attention over ``context``."""
    cfg = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    if cfg.tie_word_embeddings:
        matmul += model.get_input_embeddings().weight.numel()
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * context
    return 2 * matmul + attn


def main(argv=None) -> int:
    import torch
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model"), ap.add_argument("--data")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small model, 2 repetitions (CI)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the engine is exact")
    ap.add_argument("--out", default="rollout")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="the model's weights")
    a = ap.parse_args(argv)
    rl = yaml.safe_load((REPO / "config.yaml").read_text())["rl"]
    torch.set_num_threads(a.threads)
    from sft2rl import rollout
    from sft2rl.generation import encode_prompts, response_mask, stop_token_ids
    from sft2rl.grpo import response_logprobs

    n_prompts, n, new = rl["train_batch"], rl["n"], rl["max_response_length"]
    reps = 2 if a.quick else a.reps
    model, tok, prompts, source = load(a.model, a.data, n_prompts, a.quick, a.device, a.dtype)
    uids, umask = encode_prompts(tok, prompts, None, a.device)
    ids, mask = uids.repeat_interleave(n, 0), umask.repeat_interleave(n, 0)
    # every stop id (EOS and the chat turn's end), as generation.generate uses them
    eos, pad, temp = stop_token_ids(model, tok), tok.pad_token_id, rl["temperature"]

    def cut(x):
        return x.masked_fill(response_mask(x, eos) == 0, pad)

    def hf(do_sample, seed):
        torch.manual_seed(seed)
        kw = dict(temperature=temp, top_p=1.0, top_k=0) if do_sample else {}
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=do_sample,
                                 pad_token_id=pad, eos_token_id=eos if len(eos) > 1 else eos[0], **kw)
        return cut(out[:, ids.shape[1]:])

    def lean(do_sample, seed, match=False):
        torch.manual_seed(seed)
        return rollout.decode(model, uids, umask, max_new_tokens=new, stop_token_ids=eos, pad_token_id=pad,
                              do_sample=do_sample, temperature=temp, match_generate=match, num_return_sequences=n)

    def same(x, y):
        return x.shape[1] <= y.shape[1] and torch.equal(x, y[:, :x.shape[1]]) and bool((y[:, x.shape[1]:] == pad).all())

    # ---- exactness
    greedy_ref, (greedy, _) = hf(False, 0), lean(False, 0)
    sampled_ref, (sampled, _) = hf(True, 7), lean(True, 7, match=True)
    out, lp = lean(True, 7)
    rmask = response_mask(out, eos)
    with torch.no_grad():
        ref_lp, _ = response_logprobs(model, ids, mask, out, rmask, temp)
    exact = {"greedy_identical": same(greedy, greedy_ref) and same(greedy_ref, greedy),
             "sampled_identical_same_seed": same(sampled, sampled_ref) and same(sampled_ref, sampled),
             "logprob_max_abs_diff": float(((ref_lp - lp).abs() * rmask).max()),
             # fp32 log-probs far below -1 carry rounding of ~1e-6 x |log p|: compared relative there
             "logprob_max_rel_diff": float(((ref_lp - lp).abs() / ref_lp.abs().clamp(min=1) * rmask).max()),
             "logprob_at_max_abs_diff": float(ref_lp.flatten()[((ref_lp - lp).abs() * rmask).argmax()]),
             "rows_stopping_early": int((rmask.sum(1) < out.shape[1]).sum())}
    exact["exact"] = (exact["greedy_identical"] and exact["sampled_identical_same_seed"]
                      and exact["logprob_max_rel_diff"] < 1e-5)

    # ---- throughput (sampled, as in GRPO), interleaved
    counted: dict[str, list[int]] = {"generate": [], "lean": [], "lean_match_generate": []}
    seed = [100]

    def run(name, fn):
        def go():
            seed[0] += 1
            res = fn(seed[0] // 3)  # the three contenders of a round share a seed
            toks = res[0] if isinstance(res, tuple) else res
            counted[name].append(int(response_mask(toks, eos).sum()))  # up to and with the stop id
        return go

    timing = interleaved({"generate": run("generate", lambda s: hf(True, s)),
                          "lean": run("lean", lambda s: lean(True, s)),
                          "lean_match_generate": run("lean_match_generate", lambda s: lean(True, s, match=True))},
                         reps=reps)
    gflops = device_matmul_gflops(a.device, a.dtype, a.threads)
    p_len = float(mask.sum(1).float().mean())
    rows = []

    def median_tokens(name: str) -> int:
        return sorted(counted[name][-reps:])[len(counted[name][-reps:]) // 2]

    # the engines sample different tokens, so they are compared by tokens/s, not by time
    base_tps = median_tokens("generate") / timing["generate"]["median_s"]
    for name, t in timing.items():
        toks = median_tokens(name)
        tps = toks / t["median_s"]
        fpt = flops_per_token(model, p_len + new / 2)
        # the work a rollout needs: each distinct prompt prefilled once, then every response token
        prefill = flops_per_token(model, p_len / 2) * float(umask.sum())
        achieved = (tps * fpt + prefill / t["median_s"]) / 1e9
        rows.append({"engine": name, "median_s": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                     "response_tokens": toks, "tokens_per_s": tps, "speedup_vs_generate": tps / base_tps,
                     "useful_gflops": achieved, "share_of_matmul_peak": achieved / gflops})
    payload = {"what": "rollout throughput at the GRPO batch shape", "model": source,
               "batch": {"prompts": n_prompts, "n": n, "rows": int(ids.shape[0]), "max_new_tokens": new,
                         "temperature": temp, "mean_prompt_tokens": p_len},
               "threads": a.threads, "device": device_name(a.device), "dtype": a.dtype,
               "matmul_gflops": gflops, "exactness": exact, "timing": timing}
    publish(a.out, payload, rows)
    print("exactness:", exact)
    print("matmul peak:", f"{gflops:.1f} GFLOP/s ({device_name(a.device)}, {a.dtype})")
    if a.check and not exact["exact"]:
        print("NOT EXACT", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
