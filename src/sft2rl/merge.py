"""Verified LoRA merge: base + adapter -> one HF directory with its tokenizer.

Guards against the known failures of the reference tools: writing the unmerged base
(every LoRA-targeted weight must differ from the base after the merge), a merged model
that does not compute base+adapter (its logits, reloaded from disk, must equal the
adapter model's on a probe batch), merging a run directory instead of a checkpoint, and
an existing output folder (replaced atomically).

A checkpoint of full fine-tuning (``sft.train_mode: full``: a whole HF model, no adapter) is
exported with the same guards: it must differ from the base (an untrained checkpoint is
refused), and the written model must compute the checkpoint's logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import MergeError  # noqa: F401  (re-exported: merge.MergeError)
from .io import atomic_dir, write_json
from .logutil import LOG

PROBE_TEXTS = [
    "What is the capital of the country you know best?",
    "<think>\nI add 4 and 7.\n</think>\n\n<proactive>\nI am sure.\n</proactive>\n\n4 plus 7 is 11.",
    "Hello! Please tell me something you are not sure about.",
]


def _probe_batch(tokenizer, device) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "right"
    return tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


def _lora_targets(peft_model) -> list[str]:
    """Names (in the merged model's namespace) of the weights the adapter changes."""
    names = set()
    for name, _ in peft_model.named_parameters():
        for marker in (".lora_A.", ".trainable_tokens_delta"):
            if marker in name:
                prefix = name.split(marker)[0].replace("base_model.model.", "", 1).replace(".token_adapter", "")
                names.add(prefix + ".weight")
    return sorted(names)


def _write_verified(model, tokenizer, batch, ref_logits: torch.Tensor, out_dir: str, atol: float, mismatch: str,
                    report: dict[str, Any]) -> dict[str, Any]:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` atomically, with ``merge_report.json``;
    refused (nothing written) unless the model reloaded from disk computes ``ref_logits`` on
    ``batch``. The saved generation config lists every end-of-turn id (a Qwen2.5 base lists only
    <|endoftext|>), so tools that read it (vLLM, SGLang, generate) stop where a turn ends."""
    from transformers import AutoModelForCausalLM

    from .generation import stop_token_ids

    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            diff = float((reloaded(**batch).logits - ref_logits).abs().max())
        scale = float(ref_logits.abs().max())
        if diff > atol * max(1.0, scale):
            raise MergeError(f"{mismatch} by {diff:.3g} (tolerance {atol * max(1.0, scale):.3g}); refusing to "
                             f"write {out_dir}")
        report = dict(report, max_logit_diff=diff, logit_scale=scale, verified=True)
        write_json(Path(tmp) / "merge_report.json", report)
    return report


def merge_adapter(base: str, adapter: str, out_dir: str, atol: float = 1e-4) -> dict[str, Any]:
    """Merge ``adapter`` into ``base``, verify, and write ``out_dir`` atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_path = Path(adapter)
    if not (adapter_path / "adapter_config.json").is_file():
        if (adapter_path / "config.json").is_file():  # full fine-tuning: the checkpoint is the model
            return export_full(base, adapter, out_dir, atol)
        raise MergeError(f"{adapter_path}: no adapter_config.json; pass a checkpoint directory, not a run directory")
    device = torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter_path / "tokenizer_config.json").exists() else base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    base_state = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base_model, adapter).to(device).eval()
    targets = _lora_targets(peft_model)
    batch = _probe_batch(tokenizer, device)
    with torch.no_grad():
        ref_logits = peft_model(**batch).logits
    merged = peft_model.merge_and_unload()
    merged_state = merged.state_dict()
    unchanged = [k for k in targets if k in merged_state and torch.equal(merged_state[k], base_state[k])]
    missing = [k for k in targets if k not in merged_state]
    if not targets or missing:
        raise MergeError(f"adapter {adapter}: could not locate its target weights in the merged model ({missing[:3]})")
    if unchanged:
        raise MergeError(
            f"merge changed nothing in {len(unchanged)} of {len(targets)} LoRA-targeted weights "
            f"(e.g. {unchanged[0]}): the adapter at {adapter} is untrained or was not applied"
        )
    max_delta = max(float((merged_state[k] - base_state[k]).abs().max()) for k in targets)
    report = _write_verified(merged, tokenizer, batch, ref_logits, out_dir, atol,
                             "merged model's logits differ from base+adapter",
                             {"base": str(base), "adapter": str(adapter), "lora_targets": len(targets),
                              "max_weight_delta": max_delta})
    LOG.info("merged %s into %s: %d target weights changed (max |dW| %.3g), logits match within %.2g",
             adapter, out_dir, len(targets), max_delta, report["max_logit_diff"])
    return report


def export_full(base: str, checkpoint: str, out_dir: str, atol: float = 1e-4) -> dict[str, Any]:
    """A fully fine-tuned checkpoint -> ``out_dir``, verified: trained (some weight differs from
    ``base``), and the written model computes the checkpoint's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    base_state = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    state = model.state_dict()
    if state.keys() != base_state.keys() or any(state[k].shape != base_state[k].shape for k in state):
        raise MergeError(f"checkpoint {checkpoint} does not have the shape of its base {base}")
    changed = [k for k in state if not torch.equal(state[k], base_state[k])]
    if not changed:
        raise MergeError(f"checkpoint {checkpoint} equals its base {base}: it is untrained")
    max_delta = max(float((state[k] - base_state[k]).abs().max()) for k in changed)
    batch = _probe_batch(tokenizer, torch.device("cpu"))
    with torch.no_grad():
        ref_logits = model(**batch).logits
    report = _write_verified(model, tokenizer, batch, ref_logits, out_dir, atol,
                             "exported model's logits differ from the checkpoint's",
                             {"base": str(base), "checkpoint": str(checkpoint), "train_mode": "full",
                              "changed_weights": len(changed), "max_weight_delta": max_delta})
    LOG.info("exported %s to %s: %d weights changed (max |dW| %.3g), logits match within %.2g",
             checkpoint, out_dir, len(changed), max_delta, report["max_logit_diff"])
    return report
