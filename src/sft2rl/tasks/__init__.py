"""Task families. Each task keeps together what belongs to it alone: its data generation or
raw-data schema, its environment or simulator, its evaluation metrics. The stages every
task shares (``sft``, ``merge``, ``grpo``, generation, model loading) stay in the package root.

``sft2rl.tasks.games``: Sokoban and FrozenLake, BFS-solver SFT data, evaluation by playing.
(The proactive-QA world predates this layout and lives in the package root: ``world``,
``data``, ``reward``, ``evaluate``.)
"""
