# Game environments (SPEC sections B and E): Sokoban and FrozenLake. Everything about them is in
# src/sft2rl/tasks/games/ and here; the SFT and merge rules are the shared ones (use rule).
#   levels + BFS rows -> (tiny base) -> SFT sft-<env>-seed<S> -> verified merge of the best
#   checkpoint -> the merged model, the base, a random policy and BFS play the test levels ->
#   multi-turn GRPO rl-<env>-seed<S> -> the RL model plays them too (docs/games.md)
#   snakemake --cores all results/games/sft_eval.csv
from sft2rl.tasks.games import ENVS as GAME_ENVS_ALL, rl_config as game_rl_config, sft_config as game_sft_config
from sft2rl.tasks.games.prompts import base_added_tokens as game_base_added_tokens

GAMES = config["games"]
GAME_ENVS = GAMES["envs"]
GAME_DATA = f"{PROCESSED}/games"
GAME_BASE = "results/games/models/base" if TINY else config["model"]["base"]
#: the base model as an input (model_input: the tiny base's directory, a local base's files); the rules
#: take it through a function, as the shared rules take base_input (params.base names the same directory)
GAME_BASE_INPUT = model_input(GAME_BASE)
#: the sft: section with the games' overrides; the loss is on the last (the solver's) turn only
GAME_SFT = game_sft_config(config)
GAME_MERGE = GAMES["sft"].get("merge_checkpoint", config["sft"]["merge_checkpoint"])
#: the rl: section with the games' overrides; replies as long as in play
GAME_RL = game_rl_config(config)
#: the policies of the SFT table (sft_eval.csv); "rl" plays too, for rl_eval.csv
GAME_POLICIES = ["sft", "base", "random", "bfs"]
GAME_LEVEL_KEYS = ("seeds", "counts", "max_solution_length", "render", "history", "with_thinking")
# Per env (tables, not functions: this file holds rules only):
#: the games keys one env's data and play depend on (editing Sokoban's reruns only Sokoban)
#: (max_steps: the splits share no state reachable within an episode's step limit)
GAME_CFG = {env: dict({k: GAMES[k] for k in GAME_LEVEL_KEYS}, max_steps=GAMES["eval"]["max_steps"], **{env: GAMES[env]})
            for env in GAME_ENVS_ALL}
#: its SFT rows: the generated ones, or your own (games.sft_files) once checked by game_user_rows
GAME_SFT_FILES = {
    env: {split: f"{GAME_DATA}/{env}/user/{split}.parquet" if env in GAMES["sft_files"]
          else f"{GAME_DATA}/{env}/{split}.parquet" for split in ("train", "val")}
    for env in GAME_ENVS_ALL
}
#: its SFT and RL run names
GAME_RUN = {env: f"sft-{env}-seed{GAME_SFT['seed']}" for env in GAME_ENVS_ALL}
GAME_RL_RUN = {env: f"rl-{env}-seed{GAME_RL['seed']}" for env in GAME_ENVS_ALL}
#: the model directory each policy plays with (none for random and BFS)
GAME_POLICY_MODEL = {
    env: {"sft": f"results/games/models/{GAME_RUN[env]}/merged", "rl": f"results/games/models/{GAME_RL_RUN[env]}/final",
          "base": GAME_BASE, "random": None, "bfs": None}
    for env in GAME_ENVS_ALL
}
#: ... and as the job's input: nothing for random and BFS, the files of a local base the workflow
#: does not build (nothing for a hub id)
GAME_POLICY_INPUT = {
    env: {policy: [] if model is None else GAME_BASE_INPUT if policy == "base" else model
          for policy, model in models.items()}
    for env, models in GAME_POLICY_MODEL.items()
}

#: the chain base -> SFT -> merge -> RL runs before the play jobs that wait beside it (the base's,
#: the SFT model's): with 2 cores Snakemake otherwise started a play job before Sokoban's SFT
GAME_CHAIN_PRIORITY = 10

wildcard_constraints:
    env="|".join(GAME_ENVS_ALL),
    policy="|".join(GAME_POLICIES + ["rl"]),


rule game_data:
    """Levels of one env (test, val, train seeds; disjoint by every state on their BFS solution
    paths), BFS solutions, and one SFT row per solver step in the reference schema."""
    input:
        code=code("game_data"),
    output:
        levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
        train=f"{GAME_DATA}/{{env}}/train.parquet",
        val=f"{GAME_DATA}/{{env}}/val.parquet",
        test=f"{GAME_DATA}/{{env}}/test.parquet",
    params:
        # recovery shapes the train rows only: play and the corpus do not key on it
        games=lambda wc: dict(GAME_CFG[wc.env], recovery=GAMES["recovery"]),
    threads: 1
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/games/data_{env}.tsv"
    log:
        "results/logs/games/data_{env}.log",
    script:
        "../scripts/game_data.py"


rule game_user_rows:
    """Your own game SFT rows (games.sft_files), validated (file, row, field) before anything is
    written. A row whose prompt shows a state a held-out level can reach within the step limit
    (test levels; for the train rows also val levels) is refused, dropped or kept
    (games.test_overlap); user/overlap.json counts them."""
    input:
        train=lambda wc: GAMES["sft_files"][wc.env]["train"],
        val=lambda wc: GAMES["sft_files"][wc.env]["val"],
        levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
        code=code("game_data"),
    output:
        train=f"{GAME_DATA}/{{env}}/user/train.parquet",
        val=f"{GAME_DATA}/{{env}}/user/val.parquet",
        overlap=f"{GAME_DATA}/{{env}}/user/overlap.json",
    params:
        max_steps=GAMES["eval"]["max_steps"],
        style=GAMES["render"],
        test_overlap=GAMES["test_overlap"],
    threads: 1
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/games/user_rows_{env}.tsv"
    log:
        "results/logs/games/user_rows_{env}.log",
    script:
        "../scripts/game_data.py"


rule game_corpus:
    """Pretraining corpus of the games' tiny base: the train levels played out in plain text, each
    headed by the game's instruction (so the base sees its answer line and the <answer> tags, not
    the chat format); no val/test level nor any state of their solver paths."""
    input:
        levels=expand(f"{GAME_DATA}/{{env}}/levels.jsonl", env=GAME_ENVS),
        code=code("game_data"),
    output:
        f"{GAME_DATA}/corpus.jsonl",
    params:
        games={env: GAME_CFG[env] for env in GAME_ENVS},
        corpus=GAMES["corpus"],
    threads: 1
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/games/corpus.tsv"
    log:
        "results/logs/games/corpus.log",
    script:
        "../scripts/game_data.py"


if TINY:

    rule game_base_model:
        """The games' tiny Qwen2 (tokenizer + pretraining on the game corpus)."""
        input:
            corpus=f"{GAME_DATA}/corpus.jsonl",
            # the SFT rows of every env, checked against the pretraining window before pretraining
            sft_rows=[f for env in GAME_ENVS for f in GAME_SFT_FILES[env].values()],
            code=code("base_model"),
        output:
            directory("results/games/models/base"),
        params:
            overlong=GAME_SFT.get("overlong", "error"),
            loss_turns=GAME_SFT.get("loss_turns", "all"),
            tiny=dict(config["model"]["tiny"], **GAMES["tiny"]),
            pretrain=dict(config["model"]["pretrain"], **GAMES["pretrain"]),
            tensorboard="results/games/models/tensorboard/base",
            added_tokens=game_base_added_tokens(GAMES),
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/games/base_model.tsv"
        log:
            "results/logs/games/base_model.log",
        script:
            "../scripts/base_model.py"


# SFT and merge are the shared rules (sft.smk for the local backend, verl.smk for verl): the same
# threads, resources, software environment and script or command; the games give the rows, the
# paths, the code the job runs and the parameters:
if config["backend"] == "local":
    #: the local loop's: the base, the sft section with the games' overrides, the seed
    GAME_SFT_PARAMS = dict(base=GAME_BASE, sft=GAME_SFT, seed=lambda wc: int(wc.seed))
    GAME_MERGE_PARAMS = dict(base=GAME_BASE, which=GAME_MERGE)
    GAME_SFT_CODE, GAME_MERGE_CODE = code("sft"), code("merge")
else:
    #: verl's SFT trainer and model merger command lines (the loss on the final turn: sft2rl.verl_sft_data)
    GAME_SFT_PARAMS = dict(
        cmd=lambda wc, input, resources: verl_launch.sft_command(
            sft_run=f"sft-{wc.env}-seed{wc.seed}",
            run_dir=f"results/games/sft/sft-{wc.env}-seed{wc.seed}",
            base=GAME_BASE,
            train=input.train,
            val=input.val,
            sft=GAME_SFT,
            seed=int(wc.seed),
            nnodes=resources.nodes,
            gpus_per_node=verl_launch.gpus_per_node(resources),
            code_root=CODE_ROOT,
            rdzv_port=VERL["rdzv_port"],
        ),
    )
    GAME_MERGE_PARAMS = dict(
        cmd=lambda wc, output: verl_launch.merge_command(
            sft_run=f"sft-{wc.env}-seed{wc.seed}",
            run_dir=f"results/games/sft/sft-{wc.env}-seed{wc.seed}",
            which=GAME_MERGE,
            base=GAME_BASE,
            out_dir=output[0],
            code_root=CODE_ROOT,
            train_mode=GAME_SFT.get("train_mode", "lora"),
        ),
    )
    GAME_SFT_CODE, GAME_MERGE_CODE = code("verl_export", modules=["verl_sft_data"]), code("verl_export")


use rule sft as game_sft with:
    """SFT on one env's solver rows, the loss on the final response only (local loop or verl's SFT
    trainer); a checkpoint and a validation loss per epoch (the local loop's also before training)."""
    input:
        unpack(lambda wc: GAME_SFT_FILES[wc.env]),
        base=lambda wc: GAME_BASE_INPUT,
        code=GAME_SFT_CODE,
    output:
        checkpoints=directory("results/games/sft/sft-{env}-seed{seed}/checkpoints"),
        metrics="results/games/sft/sft-{env}-seed{seed}/metrics.json",
    wildcard_constraints:
        seed=r"\d+",
    params:
        **GAME_SFT_PARAMS,
    priority: GAME_CHAIN_PRIORITY
    benchmark:
        "results/benchmarks/games/sft-{env}-seed{seed}.tsv"
    log:
        "results/logs/games/sft-{env}-seed{seed}.log",


use rule merge as game_merge with:
    """Verified merge of the chosen checkpoint (best: lowest validation loss, never 'before training');
    on verl, verl's model merger first."""
    input:
        checkpoints="results/games/sft/sft-{env}-seed{seed}/checkpoints",
        metrics="results/games/sft/sft-{env}-seed{seed}/metrics.json",
        base=lambda wc: GAME_BASE_INPUT,
        code=GAME_MERGE_CODE,
    output:
        directory("results/games/models/sft-{env}-seed{seed}/merged"),
    wildcard_constraints:
        seed=r"\d+",
    params:
        **GAME_MERGE_PARAMS,
    priority: GAME_CHAIN_PRIORITY
    benchmark:
        "results/benchmarks/games/merge-{env}-seed{seed}.tsv"
    log:
        "results/logs/games/merge-{env}-seed{seed}.log",


rule game_play:
    """One policy plays every test level of one env through the environment (greedy, and k sampled
    episodes per level for the models); episodes and the summary rows."""
    input:
        levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
        model=lambda wc: GAME_POLICY_INPUT[wc.env][wc.policy],
        code=code("game_play"),
    output:
        episodes="results/games/eval/{env}/{policy}.jsonl",
        summary="results/games/eval/{env}/{policy}.json",
    params:
        model=lambda wc: GAME_POLICY_MODEL[wc.env][wc.policy],
        games=lambda wc: GAME_CFG[wc.env],
        eval=GAMES["eval"],
        bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        **LOCAL_GPU_RES,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/games/play_{env}_{policy}.tsv"
    log:
        "results/logs/games/play_{env}_{policy}.log",
    script:
        "../scripts/game_play.py"


if config["backend"] == "local":

    rule game_rl:
        """Multi-turn GRPO from the env's merged SFT model on its train levels (sft2rl.tasks.games.rl on
        the shared trainer); validation success on the val levels every rl.val_every steps; the last
        policy exported as an HF directory. Resumes after a kill, restarts after any change."""
        input:
            levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
            init=lambda wc: f"results/games/models/sft-{wc.env}-seed{GAME_SFT['seed']}/merged",
            sft=lambda wc: GAME_SFT_FILES[wc.env]["train"] if GAME_RL["sft_coef"] else [],
            code=code("game_rl"),
        output:
            final=directory("results/games/models/rl-{env}-seed{seed}/final"),
            summary="results/games/rl/rl-{env}-seed{seed}/summary.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            init=lambda wc: f"results/games/models/sft-{wc.env}-seed{GAME_SFT['seed']}/merged",
            cfg=lambda wc: dict(GAME_RL, seed=int(wc.seed)),
            games=lambda wc: dict(GAME_CFG[wc.env], eval=GAMES["eval"], rl=GAMES["rl"]),
            sft_loss_turns=GAME_SFT.get("loss_turns", "all"),
        priority: GAME_CHAIN_PRIORITY
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/games/rl-{env}-seed{seed}.tsv"
        log:
            "results/logs/games/rl-{env}-seed{seed}.log",
        script:
            "../scripts/game_rl.py"


if config["backend"] == "verl":

    rule game_rl:
        """Multi-turn GRPO on verl from the env's merged SFT model: main_ppo with the games'
        agent loop (sft2rl.tasks.games.verl_agent: the environment steps inside verl's rollout,
        one sequence per episode, games.history: true), verl's grpo estimator over the episodes
        of a level; the last checkpoint exported as an HF directory, the summary's history from
        the loop's episode log."""
        input:
            levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
            init=lambda wc: f"results/games/models/sft-{wc.env}-seed{GAME_SFT['seed']}/merged",
            code=code("verl_export", *VERL_RAY, modules=["tasks.games.verl_agent"]),
        output:
            final=directory("results/games/models/rl-{env}-seed{seed}/final"),
            summary="results/games/rl/rl-{env}-seed{seed}/summary.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            cmd=lambda wc, input, output, resources: verl_launch.game_rl_command(
                rl_run=f"rl-{wc.env}-seed{wc.seed}",
                env=wc.env,
                init=input.init,
                levels=input.levels,
                rl=dict(GAME_RL, seed=int(wc.seed)),
                games=dict(GAME_CFG[wc.env], eval=GAMES["eval"], rl=GAMES["rl"]),
                verl=VERL,
                nnodes=resources.nodes,
                gpus_per_node=verl_launch.gpus_per_node(resources),
                code_root=CODE_ROOT,
                run_dir=f"results/games/rl/rl-{wc.env}-seed{wc.seed}",
                final=output.final,
                summary=output.summary,
            ),
        priority: GAME_CHAIN_PRIORITY
        threads: VERL["cpus_per_node"]
        resources:
            **verl_launch.job_resources(VERL, VERL["grpo_runtime"]),
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/games/rl-{env}-seed{seed}.tsv"
        log:
            "results/logs/games/rl-{env}-seed{seed}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"


GAME_RL_FIGURES = [f"results/figures/games_rl_success.{ext}" for ext in ("png", "pdf")]


rule game_rl_random:
    """The random policy on the levels the RL curves are measured on: the val levels and the
    train levels RL plays (games.rl.levels), games.eval.k_samples episodes per level; the RL
    figure's no-information lines."""
    input:
        levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
        code=code("game_rl_random"),
    output:
        "results/games/rl/random-{env}.json",
    params:
        # only what it plays by: editing another eval or rl key reruns nothing here
        games=lambda wc: dict(GAME_CFG[wc.env], eval={k: GAMES["eval"][k] for k in ("seed", "max_steps")},
                              rl={"levels": GAMES["rl"].get("levels")}),
        episodes=max(GAMES["eval"]["k_samples"], 1),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/games/curves_random_{env}.tsv"
    log:
        "results/logs/games/rl_random_{env}.log",
    script:
        "../scripts/game_rl_random.py"


rule game_rl_table:
    """results/games/rl_eval.csv: SFT and RL on the test levels per env and mode, the paired
    per-level difference RL - SFT with its bootstrap interval, the random policy beside them;
    its LaTeX table; the figure of val success against the RL step, the random policy on the same
    levels beside it."""
    input:
        sft=expand("results/games/eval/{env}/sft.json", env=GAME_ENVS),
        sft_episodes=expand("results/games/eval/{env}/sft.jsonl", env=GAME_ENVS),
        rl=expand("results/games/eval/{env}/rl.json", env=GAME_ENVS),
        rl_episodes=expand("results/games/eval/{env}/rl.jsonl", env=GAME_ENVS),
        random=expand("results/games/eval/{env}/random.json", env=GAME_ENVS),
        train=[f"results/games/rl/{GAME_RL_RUN[env]}/summary.json" for env in GAME_ENVS],
        # the figure's random policy on the val levels and the train levels RL played
        random_curves=expand("results/games/rl/random-{env}.json", env=GAME_ENVS),
        code=code("game_table"),
    output:
        csv=report("results/games/rl_eval.csv", caption="../report/games_rl.rst", category="Tables",
                   labels={"table": "games_rl"}),
        tex="results/tables/games_rl_eval.tex",
        figure=[report(f, caption="../report/games_rl_figure.rst", category="Figures", subcategory="Games",
                       labels={"figure": "games_rl_success"}) if f.endswith(".png") else f for f in GAME_RL_FIGURES],
    params:
        envs=GAME_ENVS,
        bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/games/rl_table.log",
    script:
        "../scripts/game_table.py"


rule game_table:
    """results/games/sft_eval.csv: success (with its interval), valid actions, invalid format, steps over
    the BFS optimum, per env and policy; its LaTeX table for the paper."""
    input:
        summaries=expand("results/games/eval/{env}/{policy}.json", env=GAME_ENVS, policy=GAME_POLICIES),
        code=code("game_table"),
    output:
        csv=report("results/games/sft_eval.csv", caption="../report/games.rst", category="Tables",
                   labels={"table": "games"}),
        tex="results/tables/games_sft_eval.tex",
    params:
        ci_level=config["eval"]["ci_level"],  # the table's header (the intervals are the play summaries')
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/games/table.log",
    script:
        "../scripts/game_table.py"


GAME_FIGURES = [f"results/figures/games_success.{ext}" for ext in ("png", "pdf")]


rule game_figure:
    """Success rate with its interval per env and policy (greedy and sampled)."""
    input:
        csv="results/games/sft_eval.csv",
        code=code("game_table"),
    output:
        [report(f, caption="../report/games_figure.rst", category="Figures", subcategory="Games",
                labels={"figure": "games_success"}) if f.endswith(".png") else f for f in GAME_FIGURES],
    params:
        ci_level=config["eval"]["ci_level"],
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/games/figure.log",
    script:
        "../scripts/game_table.py"


# RL-init ablation (local backend): SFT on the first N train levels of each env, the same
# best-checkpoint merge, the same multi-turn GRPO and the same play on the test levels; the
# main run (every train level) is the last row of each env.
GAME_ABL = GAMES["ablation_rl_init"]
GAME_ABL_DIR = "results/games/ablation_rl_init"
if any(n >= GAMES["counts"]["train"] for n in GAME_ABL["sft_levels"]):
    raise ValueError(f"config key 'games.ablation_rl_init.sft_levels' = {GAME_ABL['sft_levels']}: each must be fewer "
                     f"than games.counts.train = {GAMES['counts']['train']} (the main run uses every train level)")

#: the model a policy of the ablation plays with, per policy (wildcards env and n)
GAME_ABL_MODEL = {"sft": f"{GAME_ABL_DIR}/{{env}}/L{{n}}/merged", "rl": f"{GAME_ABL_DIR}/{{env}}/L{{n}}/rl/final"}


if config["backend"] == "local":

    rule game_sft_levels_data:
        """SFT rows of the first {n} train levels of one env (its validation rows unchanged)."""
        input:
            levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
            code=code("game_data"),
        output:
            train=f"{GAME_DATA}/{{env}}/levels{{n}}/train.parquet",
        wildcard_constraints:
            n=r"\d+",
        params:
            games=lambda wc: dict(GAME_CFG[wc.env], recovery=GAMES["recovery"]),
        threads: 1
        conda:
            "../../envs/local.yaml"
        log:
            "results/logs/games/levels{n}_data_{env}.log",
        script:
            "../scripts/game_data.py"

    use rule game_sft as game_sft_levels with:
        input:
            train=f"{GAME_DATA}/{{env}}/levels{{n}}/train.parquet",
            val=f"{GAME_DATA}/{{env}}/val.parquet",
            base=lambda wc: GAME_BASE_INPUT,
            code=code("sft"),
        output:
            checkpoints=directory(f"{GAME_ABL_DIR}/{{env}}/L{{n}}/sft/checkpoints"),
            metrics=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/sft/metrics.json",
        wildcard_constraints:
            n=r"\d+",
        params:
            base=GAME_BASE,
            sft=GAME_SFT,
            seed=GAME_SFT["seed"],
        benchmark:
            f"results/benchmarks/games/ablation_rl_init/sft-{{env}}-L{{n}}.tsv"
        log:
            "results/logs/games/ablation_rl_init/sft-{env}-L{n}.log",

    use rule game_merge as game_merge_levels with:
        input:
            checkpoints=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/sft/checkpoints",
            metrics=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/sft/metrics.json",
            base=lambda wc: GAME_BASE_INPUT,
            code=code("merge"),
        output:
            directory(f"{GAME_ABL_DIR}/{{env}}/L{{n}}/merged"),
        wildcard_constraints:
            n=r"\d+",
        benchmark:
            f"results/benchmarks/games/ablation_rl_init/merge-{{env}}-L{{n}}.tsv"
        log:
            "results/logs/games/ablation_rl_init/merge-{env}-L{n}.log",

    use rule game_rl as game_rl_levels with:
        input:
            levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
            init=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/merged",
            sft=f"{GAME_DATA}/{{env}}/levels{{n}}/train.parquet" if GAME_RL["sft_coef"] else [],
            code=code("game_rl"),
        output:
            final=directory(f"{GAME_ABL_DIR}/{{env}}/L{{n}}/rl/final"),
            summary=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/rl/summary.json",
        wildcard_constraints:
            n=r"\d+",
        params:
            init=lambda wc: f"{GAME_ABL_DIR}/{wc.env}/L{wc.n}/merged",
            cfg=dict(GAME_RL),
            games=lambda wc: dict(GAME_CFG[wc.env], eval=GAMES["eval"], rl=GAMES["rl"]),
            sft_loss_turns=GAME_SFT.get("loss_turns", "all"),
        benchmark:
            f"results/benchmarks/games/ablation_rl_init/rl-{{env}}-L{{n}}.tsv"
        log:
            "results/logs/games/ablation_rl_init/rl-{env}-L{n}.log",

    use rule game_play as game_play_levels with:
        input:
            levels=f"{GAME_DATA}/{{env}}/levels.jsonl",
            model=lambda wc: GAME_ABL_MODEL[wc.policy].format(env=wc.env, n=wc.n),
            code=code("game_play"),
        output:
            episodes=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/eval/{{policy}}.jsonl",
            summary=f"{GAME_ABL_DIR}/{{env}}/L{{n}}/eval/{{policy}}.json",
        wildcard_constraints:
            n=r"\d+",
            policy="sft|rl",
        params:
            model=lambda wc: GAME_ABL_MODEL[wc.policy].format(env=wc.env, n=wc.n),
            games=lambda wc: GAME_CFG[wc.env],
            eval=GAMES["eval"],
            bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
        benchmark:
            f"results/benchmarks/games/ablation_rl_init/play-{{env}}-L{{n}}-{{policy}}.tsv"
        log:
            "results/logs/games/ablation_rl_init/play-{env}-L{n}-{policy}.log",

    rule game_ablation_rl_init:
        """results/games/ablation_rl_init.csv: per env, RL from SFT on the first N train levels
        (games.ablation_rl_init.sft_levels) and from the main SFT run (every train level), each
        played on the test levels; the paired per-level difference RL - SFT with its interval."""
        input:
            abl=[f"{GAME_ABL_DIR}/{env}/L{n}/{f}" for env in GAME_ABL["envs"] for n in GAME_ABL["sft_levels"]
                 for f in ("eval/sft.json", "eval/sft.jsonl", "eval/rl.json", "eval/rl.jsonl", "rl/summary.json")],
            abl_rows=[f"{GAME_DATA}/{env}/levels{n}/train.parquet" for env in GAME_ABL["envs"]
                      for n in GAME_ABL["sft_levels"]],
            main=[f"results/games/{f}" for env in GAME_ABL["envs"]
                  for f in (f"eval/{env}/sft.json", f"eval/{env}/sft.jsonl", f"eval/{env}/rl.json",
                            f"eval/{env}/rl.jsonl", f"rl/{GAME_RL_RUN[env]}/summary.json")],
            main_rows=[f"{GAME_DATA}/{env}/train.parquet" for env in GAME_ABL["envs"]],
            random=[f"results/games/eval/{env}/random.json" for env in GAME_ABL["envs"]],
            code=code("game_table"),
            own_rows=game_ablation_own_rows,
        output:
            csv="results/games/ablation_rl_init.csv",
            tex="results/tables/games_ablation_rl_init.tex",
        params:
            envs=GAME_ABL["envs"],
            sft_levels=GAME_ABL["sft_levels"],
            all_levels=GAMES["counts"]["train"],
            bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
        conda:
            "../../envs/local.yaml"
        log:
            "results/logs/games/ablation_rl_init.log",
        script:
            "../scripts/game_table.py"


rule games:
    """The whole games system: SFT and RL tables and figures."""
    input:
        "results/games/sft_eval.csv",
        GAME_FIGURES,
        "results/games/rl_eval.csv",
        GAME_RL_FIGURES,


rule games_ablation:
    """The games' RL-init ablation (local backend)."""
    input:
        "results/games/ablation_rl_init.csv" if config["backend"] == "local" and GAME_ABL["envs"] else [],


localrules:
    games,
    games_ablation,
