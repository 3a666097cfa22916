"""The rule-based simulated patient: answers from the case's recorded facts.

A case's ``patient_information`` (the MTMedDialog field) lists recorded doctor questions and
the patient's answers. The patient answers a question with the answer of the most similar
recorded question: cosine similarity of TF-IDF word vectors fitted on the case's recorded
questions (scikit-learn; English stop words such as "do you have" are left out, so two
questions match by what they ask about, not by their frame). Below ``threshold`` (default
0.5) the patient says "Sorry, I do not know.": on the synthetic clinic, whose symptoms share
no content word, a recorded question scores 1.0 and the question of an unrecorded symptom
0, whatever the case records.
"""
from __future__ import annotations

import re
from typing import Any

from .dialog import DONT_KNOW


def _as_list(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else [str(x) for x in v]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def recorded_pairs(info: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, answer) pairs: the i-th question of an entry pairs with its i-th answer when
    the lists have the same length, else every question with all answers joined."""
    pairs = []
    for entry in info:
        qs, rs = _as_list(entry["doctor_question"]), _as_list(entry["patient_response"])
        if len(qs) == len(rs):
            pairs += list(zip(qs, rs))
        else:
            pairs += [(q, " ".join(rs)) for q in qs]
    return [(q, r) for q, r in pairs if q.strip()]


class Patient:
    def __init__(self, info: list[dict[str, Any]], threshold: float = 0.5):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.pairs = recorded_pairs(info)
        self.threshold = threshold
        self.exact = {_norm(q): r for q, r in reversed(self.pairs)}
        self.vectorizer = None
        if self.pairs:
            try:
                self.vectorizer = TfidfVectorizer(lowercase=True, stop_words="english").fit([q for q, _ in self.pairs])
                self.matrix = self.vectorizer.transform([q for q, _ in self.pairs])
            except ValueError:  # no word in any recorded question
                self.vectorizer = None

    def similarity(self, question: str) -> tuple[float, int]:
        """The best cosine similarity and the index of that recorded question (-1 if none)."""
        if self.vectorizer is None:
            return 0.0, -1
        sims = (self.matrix @ self.vectorizer.transform([question]).T).toarray().ravel()
        i = int(sims.argmax())
        return float(sims[i]), i

    def answer(self, question: str) -> str:
        if _norm(question) in self.exact:
            return self.exact[_norm(question)]
        sim, i = self.similarity(question)
        return self.pairs[i][1] if i >= 0 and sim >= self.threshold else DONT_KNOW
