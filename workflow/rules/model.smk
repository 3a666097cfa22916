# Stage 2: the base model. With model.base: tiny the workflow builds it from the world
# corpus (or, for your own data, from data.pretrain_corpus or your SFT and RL train rows);
# any other value (local directory or hub id) is used as it is, with no rule.

#: the tiny base's corpus: the synthetic world's, data.pretrain_corpus, or built from your SFT and RL files
BASE_CORPUS = PRETRAIN_CORPUS or f"{PROCESSED}/user_corpus.jsonl"

if TINY:

    rule base_model:
        """Byte-level BPE tokenizer + tiny Qwen2 + causal-LM pretraining on the corpus (BASE_CORPUS)."""
        input:
            corpus=BASE_CORPUS,
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
        benchmark:
            "results/benchmarks/base_model.tsv",
        log:
            "results/logs/base_model.log",
        script:
            "../scripts/base_model.py"
