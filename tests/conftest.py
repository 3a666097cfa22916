import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402

TINY_ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                 max_position_embeddings=256)
TINY_WORLD = dict(seed=3, n_known_entities=6, n_unknown_entities=6, relations=["capital", "river", "founder"],
                  arithmetic_max=9, n_context_questions=6, n_sft_rows=30, corpus_repeats=2, n_context_corpus=50)


@pytest.fixture(scope="session")
def tiny_world():
    from sft2rl.tasks.qa.world import build_world

    return build_world(TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_world):
    """An untrained tiny Qwen2 with the world tokenizer, saved as an HF directory."""
    import torch

    from sft2rl.model import build_tiny_model, build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer([d["text"] for d in tiny_world["corpus"]], 400)
    model = build_tiny_model(tok, TINY_ARCH).eval()
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    probe = torch.tensor([tok("What is 3 plus 9?<|im_end|>", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():  # logits of the in-memory model, for the round-trip test
        torch.save({"input_ids": probe, "logits": model(probe).logits}, out / "probe_logits.pt")
    return out


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A copy of the checkout with the reduced QA workflow built (test_pipeline.BUILT): one per
    session, shared by the pipeline tests and the SLURM test's local run."""
    from test_pipeline import BUILT, copy_checkout, smk

    work = copy_checkout(tmp_path_factory.mktemp("pipeline") / "project")
    proc = smk(work, *BUILT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work
