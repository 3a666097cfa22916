# Stage 2: the base model. With model.base: tiny the workflow builds it from the world
# corpus; any other value (local directory or hub id) is used as it is, with no rule.

if TINY:

    rule base_model:
        """Byte-level BPE tokenizer + tiny Qwen2 + causal-LM pretraining on the world corpus."""
        input:
            corpus="data/raw/world_corpus.jsonl",
            code=code("base_model"),
        output:
            directory("results/models/base"),
        params:
            tiny=config["model"]["tiny"],
            pretrain=config["model"]["pretrain"],
            tensorboard="results/models/tensorboard/base",
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        log:
            "results/logs/base_model.log",
        script:
            "../scripts/base_model.py"
