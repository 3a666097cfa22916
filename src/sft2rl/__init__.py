"""sft2rl: SFT warm-up, then GRPO reinforcement learning, as a reproducible Snakemake workflow."""

__version__ = "0.1.0"

TAG_TOKENS = ("<think>", "</think>", "<proactive>", "</proactive>")
