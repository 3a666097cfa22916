"""sft2rl: SFT warm-up, then GRPO reinforcement learning, as a reproducible Snakemake workflow."""

__version__ = "0.1.0"

SYSTEM_PROMPT = "You are a helpful proactive assistant."
TAG_TOKENS = ("<think>", "</think>", "<proactive>", "</proactive>")
