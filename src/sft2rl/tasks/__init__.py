"""Task families. Each task keeps together what belongs to it alone: its data generation or
raw-data schema, its environment or simulator, its reward, its evaluation metrics. The stages
every task shares (``sft``, ``merge``, the GRPO trainer ``grpo`` with its task interface
``rl_task``, generation, model loading) stay in the package root and never branch on a task.

``sft2rl.tasks.games``: Sokoban and FrozenLake, BFS-solver SFT data, evaluation by playing,
multi-turn RL (``games.rl``).
``sft2rl.tasks.med``: multi-turn medical consultation (MTMedDialog rows, a synthetic clinic,
a scripted and a random doctor, a rule-based simulated patient, consultation metrics).
``sft2rl.tasks.qa``: the proactive-QA task's RL task (``qa.rl``). The rest of the QA task
predates this layout and still lives in the package root: ``world``, ``data``, ``reward``,
``evaluate``, ``tables``.
"""
