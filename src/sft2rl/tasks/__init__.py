"""Task families. Each task keeps together what belongs to it alone: its data generation or
raw-data schema, its environment or simulator, its evaluation metrics. The stages every
task shares (``sft``, ``merge``, ``grpo``, generation, model loading) stay in the package root.

``sft2rl.tasks.games``: Sokoban and FrozenLake, BFS-solver SFT data, evaluation by playing.
``sft2rl.tasks.med``: multi-turn medical consultation (MTMedDialog rows, a synthetic clinic,
a scripted and a random doctor, a rule-based simulated patient, consultation metrics).
(The proactive-QA world predates this layout and lives in the package root: ``world``,
``data``, ``reward``, ``evaluate``.)
"""
