"""Pretraining of the embedded tiny base: tokens per second against the CPU's FLOP bound.

Builds the tokenizer and the tiny Qwen2 of config.yaml (model.tiny) on the world corpus
(data/raw/world_corpus.jsonl, built by the workflow; else built here from config.yaml's
world section), then runs ``--steps`` steps of ``sft2rl.model.pretrain`` at model.pretrain's
batch shape with ``--threads`` threads (the base_model rule has 2), and reports:

- training tokens per second and the FLOP rate they imply (6 x matmul parameters per token,
  LM head included, plus causal attention), as a share of the measured fp32 matmul rate;
- the seconds spent building the packed token stream (data loading) per pass over the corpus.

    python bench/pretrain.py   -> bench/results/pretrain.json, pretrain.csv
"""
from __future__ import annotations

import argparse
import sys
import time

from common import REPO, matmul_gflops, publish


def corpus_texts(cfg: dict) -> tuple[list[str], str]:
    from sft2rl.rows import load_corpus

    path = REPO / "data/raw/world_corpus.jsonl"
    if path.is_file():
        return load_corpus(str(path)), str(path)
    from sft2rl.tasks.qa.world import build_world

    return [d["text"] for d in build_world(cfg["world"])["corpus"]], "built from config.yaml world"


def main(argv=None) -> int:
    import torch
    import yaml

    from sft2rl.model import _token_stream, build_tiny_model, build_tokenizer, pretrain

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    tiny, pre = cfg["model"]["tiny"], cfg["model"]["pretrain"]
    torch.set_num_threads(a.threads)
    texts, source = corpus_texts(cfg)
    tok = build_tokenizer(texts, tiny["vocab_size"])
    t0 = time.perf_counter()
    stream = _token_stream(tok, texts)
    tokenize_s = time.perf_counter() - t0
    model = build_tiny_model(tok, tiny)
    run = dict(pre, steps=a.steps, warmup_steps=min(pre["warmup_steps"], a.steps // 2))
    stats = pretrain(model, tok, texts, run)

    seq, bsz, d, layers = pre["seq_len"], pre["batch_size"], tiny["hidden_size"], tiny["num_layers"]
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    matmul += model.get_input_embeddings().weight.numel()  # tied LM head
    flops_token = 6 * matmul + 3 * 4 * layers * d * seq / 2  # forward + backward; causal attention
    gflops = stats["tokens_per_s"] * flops_token / 1e9
    peak = matmul_gflops(a.threads)
    passes = a.steps * bsz * seq / max(1, len(stream))
    rows = [{"threads": a.threads, "steps": a.steps, "tokens_per_s": stats["tokens_per_s"],
             "gflops": gflops, "matmul_peak_gflops": peak, "share_of_peak": gflops / peak,
             "corpus_tokens": len(stream), "tokenize_s_per_pass": tokenize_s,
             "full_run_s": pre["steps"] * bsz * seq / stats["tokens_per_s"],
             "tokenize_share_of_full_run": tokenize_s * pre["steps"] * bsz * seq / max(1, len(stream))
             / (pre["steps"] * bsz * seq / stats["tokens_per_s"])}]
    payload = {"what": "tiny-base pretraining throughput", "corpus": source, "shape": {"batch": bsz, "seq_len": seq},
               "parameters": sum(p.numel() for p in model.parameters()), "flops_per_token": flops_token,
               "passes_in_bench": passes}
    publish("pretrain", payload, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
