"""Text helpers shared by the synthetic worlds of every task: the Qwen chat rendering of the
tiny models' pretraining corpora, and generated names that never contain one another."""
from __future__ import annotations

import random

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "gl"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "", "n", "r", "s", "l", "k"]


def chat_text(messages: list[dict[str, str]]) -> str:
    """Render messages in the Qwen chat format used by the tiny models' template."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


class Names:
    """Unique capitalised names; none is a substring of another (case-insensitive), nor of a
    reserved word."""

    def __init__(self, rng: random.Random, reserved: list[str]):
        self.rng = rng
        self.used: list[str] = [r.lower() for r in reserved]

    def _ok(self, name: str) -> bool:
        low = name.lower()
        return all(low not in u and u not in low for u in self.used)

    def new(self, n_syll: tuple[int, int]) -> str:
        for _ in range(100_000):
            k = self.rng.randint(*n_syll)
            name = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(k))
            name = (name + self.rng.choice(CODAS)).capitalize()
            if len(name) >= 4 and self._ok(name):
                self.used.append(name.lower())
                return name
        raise RuntimeError("name space exhausted; lower the world sizes")
