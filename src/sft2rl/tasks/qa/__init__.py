"""The proactive-QA task (SPEC section A).

``rl``: the QA task of the shared GRPO trainer (one-turn answers, the group-aware reward).
The rest of the QA task (``world``, ``data``, ``reward``, ``evaluate``, ``tables``) still
lives in the package root.
"""
