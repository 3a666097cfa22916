"""Task families. Each task keeps together what belongs to it alone: its data generation or
raw-data schema, its environment or simulator, its reward, its evaluation metrics. The stages
every task shares (``sft``, ``merge``, the GRPO trainer ``grpo`` with its task interface
``rl_task``, generation, model loading, the row checks of ``rows``) stay in the package root
and never branch on a task.

``sft2rl.tasks.qa``: the proactive-QA task (the embedded knowledge world, SFT and RL data,
the group-aware reward, one-turn RL (``qa.rl``) and its verl hooks, evaluation, run names,
the ablation tables).
``sft2rl.tasks.games``: Sokoban and FrozenLake, BFS-solver SFT data, evaluation by playing,
multi-turn RL (``games.rl``).
``sft2rl.tasks.med``: multi-turn medical consultation (MTMedDialog rows, a synthetic clinic,
a scripted and a random doctor, a rule-based simulated patient, consultation metrics).
"""
