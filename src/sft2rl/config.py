"""Config validation with a one-line error naming the key and the allowed values."""
from __future__ import annotations

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


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError with one line for the most relevant schema violation."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))
    _check_consistency(config)


def _check_consistency(config: dict[str, Any]) -> None:
    """Cross-key rules a JSON schema cannot express."""
    sft, rl = config["sft"], config["rl"]
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
        unknown = sorted(set(games["sft_files"]) - set(games["envs"]))
        if unknown:
            raise ConfigError(f"config key 'games.sft_files' names {unknown}, which are not in 'games.envs' "
                              f"= {games['envs']}")
    med = config.get("med")
    if med:
        if med["world"]["max_questions"] >= med["eval"]["max_turns"]:
            raise ConfigError(
                f"config keys 'med.world.max_questions' = {med['world']['max_questions']} must be smaller than "
                f"'med.eval.max_turns' = {med['eval']['max_turns']} (the scripted doctor diagnoses within the limit)"
            )
    tiny = config["model"]["tiny"]
    if tiny["hidden_size"] % tiny["num_heads"] or tiny["num_heads"] % tiny["num_kv_heads"]:
        raise ConfigError(
            "config keys 'model.tiny.hidden_size' must divide by 'num_heads', and 'num_heads' by 'num_kv_heads'"
        )
