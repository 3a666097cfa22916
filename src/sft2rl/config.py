"""Config validation with a one-line error naming the key and the allowed values."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


def _describe(err: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "enum":
        return f"config key '{key}' = {err.instance!r} is not allowed; allowed values: {schema['enum']}"
    if err.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return f"config key '{key}': {err.message}; allowed keys: {allowed}"
    if err.validator == "required":
        return f"config key '{key}': {err.message}"
    if err.validator in ("oneOf", "anyOf"):
        options = [s.get("enum") or s.get("type") or s.get("$ref", "").split("/")[-1] for s in err.validator_value]
        return f"config key '{key}' = {err.instance!r} does not match any of: {options}"
    return f"config key '{key}' = {err.instance!r}: {err.message}"


#: JSON Schema counts 3.0 as an integer; a float where the code takes an int (a count, a seed,
#: a batch) would pass and stop a job later with a raw TypeError, so integers are ints here
_STRICT = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)))


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError with one line for the most relevant schema violation."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _STRICT(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))
    _check_consistency(config)
    _check_model_base(config)
    _check_sizes(config)
    _check_lengths(config)


#: a hub id: ``org/name`` (letters, digits, ``._-``)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_model_base(config: dict[str, Any]) -> None:
    _check_model(config["model"]["base"], "model.base", "tiny, ")
    patient = (config.get("med") or {}).get("patient")
    if isinstance(patient, dict) and "endpoint" not in patient and isinstance(patient.get("model"), str):
        # an in-process patient model (an endpoint's model is the name its server serves)
        _check_model(patient["model"], "med.patient.model", "")


def _check_model(base: str, key: str, tiny: str) -> None:
    """A model setting: ``tiny`` (where ``tiny`` names it), a local HF directory (its config.json
    checked) or a hub id."""
    if (Path(base) / "config.json").is_file():
        _check_model_config(Path(base) / "config.json", key)
        return
    if (tiny and base == "tiny") or (HUB_ID.match(base) and not Path(base).exists()):
        return
    what = "a directory without config.json" if Path(base).is_dir() else "neither a local directory nor a hub id"
    raise ConfigError(f"config key '{key}' = {base!r} is {what}; expected {tiny}a local HF model directory "
                      f"(with config.json) or a hub id such as Qwen/Qwen2.5-0.5B-Instruct")


def _check_model_config(path: Path, key: str) -> None:
    """A local model's config.json: a JSON object whose max_position_embeddings, where given,
    is an integer (the length checks read it; transformers would stop the job on the rest)."""
    import json

    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': {path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config key '{key}': {path} must hold a JSON object, got {type(cfg).__name__}")
    n = cfg.get("max_position_embeddings")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise ConfigError(f"config key '{key}': {path}: max_position_embeddings must be an integer, got {n!r}")


def count_rows(path: str | Path) -> int | None:
    """Rows of a raw jsonl (non-blank lines) or parquet file; None if it does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # not parquet: processing reports it with the file's name
            return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _check_sizes(config: dict[str, Any]) -> None:
    """What the data can hold: samples + validation rows <= the SFT source, one RL train batch
    <= the RL train split (the world's sizes, or the rows of your files when they exist).
    (Batches over devices: ``_check_consistency`` and, per verl job, ``verl_launch``.)"""
    data, sft, rl = config["data"], config["sft"], config["rl"]
    if data["synthetic_world"]:
        from .tasks.qa.world import build_world

        world = build_world(config["world"], config["system_prompt"])
        n_sft, n_rl, source = len(world["sft_rows"]), len(world["rl_rows"]), "the synthetic world's"
        sft_where, rl_where = "world.n_sft_rows", "the world's sizes"
    else:
        n_sft, n_rl, source = count_rows(data["raw_sft"]), count_rows(data["raw_rl"]), "the"
        sft_where, rl_where = data["raw_sft"], data["raw_rl"]
    if n_sft is not None:
        for key, n in [("sft.n_samples", sft["n_samples"])] + [
                ("ablations.sft_samples", k) for k in config.get("ablations", {}).get("sft_samples", [])]:
            if n + sft["val_size"] > n_sft:
                raise ConfigError(f"config keys '{key}' = {n} + 'sft.val_size' = {sft['val_size']} are more than "
                                  f"{source} {n_sft} SFT rows ({sft_where})")
    if n_rl is not None:
        n_train = int(round(n_rl * data.get("train_fraction", 0.95)))
        if rl["train_batch"] > n_train:
            raise ConfigError(f"config key 'rl.train_batch' = {rl['train_batch']} is larger than the RL train split: "
                              f"{n_train} of {source} {n_rl} RL rows ({rl_where}) with 'data.train_fraction' = "
                              f"{data.get('train_fraction', 0.95)}")


def _check_consistency(config: dict[str, Any]) -> None:
    """Cross-key rules a JSON schema cannot express."""
    from .tasks.qa.runs import fmt_beta

    sft, rl = config["sft"], config["rl"]
    # an RL run trains at the beta its name states (six significant digits)
    for key, betas in (("ablations.beta", config["ablations"]["beta"]), ("reward.beta", [config["reward"]["beta"]])):
        for b in betas:
            if float(fmt_beta(b)) != float(b):
                raise ConfigError(f"config key '{key}' = {b!r}: a run name holds beta{fmt_beta(b)}, and the run would "
                                  "train at that; give at most six significant digits")
    names = [fmt_beta(b) for b in config["ablations"]["beta"]]
    if len(set(names)) < len(names):
        raise ConfigError(f"config key 'ablations.beta' = {config['ablations']['beta']!r}: two values name one run "
                          f"({names})")
    if sft["train_batch"] % sft["micro_batch"]:
        raise ConfigError(
            f"config keys 'sft.train_batch' = {sft['train_batch']} must be a multiple of "
            f"'sft.micro_batch' = {sft['micro_batch']}"
        )
    if rl["train_batch"] % rl["ppo_mini_batch"]:
        raise ConfigError(
            f"config keys 'rl.train_batch' = {rl['train_batch']} must be a multiple of "
            f"'rl.ppo_mini_batch' = {rl['ppo_mini_batch']}"
        )
    for task in ("games", "med"):  # the tasks' sft: overrides, completed from sft:
        tsft = dict(sft, **config.get(task, {}).get("sft", {}))
        if tsft["train_batch"] % tsft["micro_batch"]:
            raise ConfigError(
                f"config keys '{task}.sft.train_batch' = {tsft['train_batch']} must be a multiple of "
                f"'{task}.sft.micro_batch' = {tsft['micro_batch']} (unset keys come from 'sft')"
            )
    games = config.get("games")
    if games:
        if games.get("recovery", {}).get("still", 0) and games["history"] is False:
            raise ConfigError("config key 'games.recovery.still' = "
                              f"{games['recovery']['still']} needs a history in the prompt (games.history: 1 or "
                              "more, or true): with the Markov prompt a move that changed nothing shows the same "
                              "prompt as the solver's own row")
        unknown = sorted(set(games["sft_files"]) - set(games["envs"]))
        if unknown:
            raise ConfigError(f"config key 'games.sft_files' names {unknown}, which are not in 'games.envs' "
                              f"= {games['envs']}")
        unknown = sorted(set(games.get("ablation_rl_init", {}).get("envs", [])) - set(games["envs"]))
        if unknown:  # the base's corpus holds only games.envs: such a model would learn from a base without it
            raise ConfigError(f"config key 'games.ablation_rl_init.envs' names {unknown}, which are not in "
                              f"'games.envs' = {games['envs']}")
        from .tasks.games import rl_config

        grl = rl_config(config)
        n_levels = min(games["counts"]["train"], games["rl"].get("levels") or games["counts"]["train"])
        if grl["train_batch"] > n_levels:
            raise ConfigError(f"config key 'games.rl.train_batch' = {grl['train_batch']} (unset: 'rl.train_batch') "
                              f"is larger than the {n_levels} train levels RL plays ('games.counts.train', "
                              "'games.rl.levels')")
    for prefix in ("", "games.", "med."):  # an epoch to merge must be one the run trains
        if prefix and prefix[:-1] not in config:
            continue
        own = config[prefix[:-1]].get("sft", {}) if prefix else sft
        pick, epochs = own.get("merge_checkpoint", sft["merge_checkpoint"]), own.get("epochs", sft["epochs"])
        if isinstance(pick, int) and not isinstance(pick, bool) and pick > epochs:
            raise ConfigError(f"config key '{prefix}sft.merge_checkpoint' = {pick}: the run trains "
                              f"{epochs} epochs ('{prefix}sft.epochs'; unset: 'sft.epochs')")
    # keys the shared schema accepts in a task's section that nothing there reads: refused, so a
    # setting never looks applied when it is not (each names the key that is)
    no_effect = {("games", "sft", "with_thinking"): "the games' targets follow 'games.with_thinking'",
                 ("med", "sft", "seed"): "the doctors' seeds are 'med.seeds'",
                 ("med", "sft", "with_thinking"): "the variants are 'med.with_thinking'",
                 ("med", "rl", "seed"): "each run's seed is the one in its name, from 'med.rl.seeds'",
                 ("med", "tiny", "cell_tokens"): "it is the games' key ('games.tiny.cell_tokens')"}
    for (task, section, key), instead in no_effect.items():
        if key in (config.get(task, {}).get(section) or {}):
            raise ConfigError(f"config key '{task}.{section}.{key}' has no effect: {instead}; remove it")
    # step advantages need turns, and the no-signal control needs no per-turn signal: refused here,
    # not when a trainer job starts (QA's RL is one turn; a task's rl: section over rl:)
    if rl.get("step_adv_weight", 0):
        raise ConfigError(f"config key 'rl.step_adv_weight' = {rl['step_adv_weight']}: QA's RL is one turn, so it "
                          "has no step advantages; set it for the multi-turn tasks under 'games.rl' or 'med.rl'")
    for task in ("games", "med"):
        if task not in config:
            continue
        own = config[task].get("rl", {})
        if own.get("shuffle_advantages", rl.get("shuffle_advantages", False)) and \
                own.get("step_adv_weight", rl.get("step_adv_weight", 0)):
            raise ConfigError(f"config key '{task}.rl.shuffle_advantages' = true (unset: 'rl.shuffle_advantages') "
                              f"with '{task}.rl.step_adv_weight' = {own.get('step_adv_weight')}: the step advantages "
                              "carry each turn's reward, so the no-signal control would keep the signal; set "
                              f"'{task}.rl.step_adv_weight: 0' for the control")
    med = config.get("med")
    # the medical no-signal control (local backend only: on verl it is not trained)
    if med and med.get("rl", {}).get("no_signal_control", True) and config.get("backend", "local") == "local":
        step_adv = med["rl"].get("step_adv_weight", rl.get("step_adv_weight", 0))
        if step_adv:
            raise ConfigError(f"config key 'med.rl.no_signal_control' = true with step advantages (step_adv_weight = "
                              f"{step_adv}, 'med.rl' over 'rl'): they carry each turn's reward, so the control "
                              f"would keep the signal; set one of them off")
    tiny = config["model"]["tiny"]
    if tiny["hidden_size"] % tiny["num_heads"] or tiny["num_heads"] % tiny["num_kv_heads"]:
        raise ConfigError(
            "config keys 'model.tiny.hidden_size' must divide by 'num_heads', and 'num_heads' by 'num_kv_heads'"
        )


def _base_positions(base: str) -> int | None:
    """max_position_embeddings of a local model directory (None for a hub id or an unknown size)."""
    path = Path(base) / "config.json"
    if not path.is_file():
        return None
    import json

    try:
        n = json.loads(path.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(n) if isinstance(n, int) else None


def _check_lengths(config: dict[str, Any]) -> None:
    """Lengths that must fit the model's positions, where the sizes are known at DAG time: each
    task's ``sft.max_length`` (a task's sft: section over sft:) and the QA GRPO prompt + response
    against ``max_position_embeddings`` of the base that task trains: the tiny base's
    (``model.tiny`` with the task's ``tiny:`` overrides) or a local model directory's config.json.
    (The rows themselves are checked by the SFT job: sft2rl.sft.length_limit; no row is ever cut.)"""
    sft, tiny = config["sft"], config["model"]["tiny"]
    base = config["model"]["base"]
    # (task prefix, its sft section completed from sft:)
    tasks = [("", sft)] + [(f"{t}.", dict(sft, **config[t].get("sft", {}))) for t in ("games", "med")
                           if config.get(t)]
    for prefix, tsft in tasks:
        if tsft.get("overlong", "error") == "drop" and config.get("backend") == "verl":
            raise ConfigError(f"config key '{prefix}sft.overlong' = 'drop': backend verl cannot leave rows out (verl "
                              f"0.9.1's SFT dataset refuses or cuts an over-long row: data.truncation); use error")
        if base == "tiny":
            overrides = config[prefix[:-1]].get("tiny", {}) if prefix else {}
            positions = dict(tiny, **overrides)["max_position_embeddings"]
            where = (f"'{prefix}tiny.max_position_embeddings' = {positions}" if "max_position_embeddings" in overrides
                     else f"'model.tiny.max_position_embeddings' = {positions}")
            what = "the positions of " + {"": "the tiny base", "games.": "the games' tiny base",
                                          "med.": "the medical task's tiny base"}[prefix]
        else:
            positions = _base_positions(base)
            where, what = f"max_position_embeddings = {positions} of {base}/config.json", "the base's positions"
        if positions is None:
            continue
        if base == "tiny":  # the window SFT checks its rows against (sft2rl.sft.pretrain_window) fits the positions
            p_over = config[prefix[:-1]].get("pretrain", {}) if prefix else {}
            window = dict(config["model"]["pretrain"], **p_over)["seq_len"]
            if window > positions:
                key = f"{prefix}pretrain.seq_len" if "seq_len" in p_over else "model.pretrain.seq_len"
                raise ConfigError(f"config key '{key}' = {window} must not exceed {where}, {what}")
        if tsft["max_length"] > positions:
            unset = " (unset keys come from 'sft')" if prefix else ""
            raise ConfigError(f"config key '{prefix}sft.max_length' = {tsft['max_length']} must not exceed {where}, "
                              f"{what}{unset}")
        if not prefix:  # GRPO's prompt limit and the replies of training and of evaluation
            rl = config["rl"]
            for key, n in (("rl.max_response_length", rl["max_response_length"]),
                           ("eval.max_new_tokens", config["eval"]["max_new_tokens"])):
                if rl["max_prompt_length"] + n > positions:
                    raise ConfigError(f"config keys 'rl.max_prompt_length' + '{key}' = {rl['max_prompt_length']} + "
                                      f"{n} must not exceed {where}, {what}")
