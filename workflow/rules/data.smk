# Stage 1: the synthetic world (embedded default) and the processed SFT / RL data.

if config["data"]["synthetic_world"]:

    rule world:
        """Build the embedded synthetic knowledge world into data/raw/ (deterministic in world.seed)."""
        input:
            code=code("world"),
        output:
            sft=config["data"]["raw_sft"],
            rl=config["data"]["raw_rl"],
            corpus="data/raw/world_corpus.jsonl",
            meta="data/raw/world.json",
            # the SFT rows in each style (world.sft_style picks the one in raw_sft): style ablation
            sft_hedge_only="data/raw/world_sft_hedge_only.jsonl",
            sft_always_block="data/raw/world_sft_always_block.jsonl",
        params:
            world=config["world"],
            system_prompt=config["system_prompt"],
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/world.tsv",
        log:
            "results/logs/world.log",
        script:
            "../scripts/world.py"


rule sft_data:
    """Seeded sample of N SFT conversations (jsonl + parquet `messages`) and validation rows."""
    input:
        config["data"]["raw_sft"],
        code=code("sft_data"),
    output:
        jsonl=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}/train.jsonl",
        train=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}/train.parquet",
        val=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}/val.parquet",
    wildcard_constraints:
        n=r"\d+",
        seed=r"\d+",
    params:
        val_size=config["sft"]["val_size"],
        with_thinking=config["sft"]["with_thinking"],
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/sft_data/n{n}_seed{seed}.tsv",
    log:
        "results/logs/sft_data/n{n}_seed{seed}.log",
    script:
        "../scripts/sft_data.py"


rule rl_data:
    """RL prompts in verl's schema, split into train and test; a test question also asked in
    training (RL train split, SFT source, the tiny base's pretraining corpus), or about an
    entity training names, is refused, dropped or kept (data.test_overlap), and counted in
    overlap.json."""
    input:
        config["data"]["raw_rl"],
        sft=config["data"]["raw_sft"],
        corpus=PRETRAIN_CORPUS or [],
        code=code("rl_data"),
    output:
        train=f"{PROCESSED}/rl/train.parquet",
        test=f"{PROCESSED}/rl/test.parquet",
        overlap=f"{PROCESSED}/rl/overlap.json",
    params:
        system_prompt=config["system_prompt"],
        data_source=config["data"]["data_source"],
        train_fraction=config["data"]["train_fraction"],
        seed=config["data"]["split_seed"],
        test_overlap=config["data"]["test_overlap"],
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/rl_data.tsv",
    log:
        "results/logs/rl_data.log",
    script:
        "../scripts/rl_data.py"


if config["data"]["synthetic_world"]:

    use rule sft_data as sft_data_style with:
        input:
            "data/raw/world_sft_{style}.jsonl",
            code=code("sft_data"),
        output:
            jsonl=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}_{{style}}/train.jsonl",
            train=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}_{{style}}/train.parquet",
            val=f"{PROCESSED}/sft/n{{n}}_seed{{seed}}_{{style}}/val.parquet",
        wildcard_constraints:
            n=r"\d+",
            seed=r"\d+",
            style="|".join(runs.STYLES),
        benchmark:
            "results/benchmarks/sft_data/n{n}_seed{seed}_{style}.tsv",
        log:
            "results/logs/sft_data/n{n}_seed{seed}_{style}.log",


if TINY and not config["data"]["synthetic_world"] and not config["data"].get("pretrain_corpus"):

    rule user_corpus:
        """The tiny base's corpus for your own data: the SFT conversations and the RL train split's
        questions with their answers, in the chat format (never the RL test split)."""
        input:
            sft=config["data"]["raw_sft"],
            rl_train=f"{PROCESSED}/rl/train.parquet",
            code=code("user_corpus"),
        output:
            f"{PROCESSED}/user_corpus.jsonl",
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/user_corpus.tsv",
        log:
            "results/logs/user_corpus.log",
        script:
            "../scripts/user_corpus.py"
