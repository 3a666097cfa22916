"""The embedded synthetic clinic: the default world of the medical task.

Diseases belong to organ-system categories. Each disease has a symptom profile (symptoms of
its category and one general symptom) and a recommendation. A patient case has one disease;
every profile symptom other than the chief complaint is present with probability
``1 - dropout`` (at least two present), symptoms outside the profile are absent. The patient
reports the chief complaint; the rest are hidden findings the doctor must ask about.

Everything is a pure function of ``med.world.seed`` (``random.Random`` seeded with integers;
no ``hash()``). Splits are drawn test first, then validation, then train; a case whose
pattern (disease, present symptoms, chief complaint) was drawn in an earlier split is drawn
again, so no test pattern occurs in training. Test and validation cases are distinct
patterns; train cases may repeat a train pattern (with another duration).
"""
from __future__ import annotations

import hashlib
import random
from itertools import combinations
from typing import Any

from ...world import _Names

#: the symptoms of each organ system, as the patient says them ("I have had a cough ...")
CATEGORY_SYMPTOMS = {
    "respiratory": ["a cough", "a sore throat", "a runny nose", "shortness of breath", "chest pain", "wheezing"],
    "digestive": ["nausea", "stomach pain", "diarrhea", "heartburn", "bloating", "loss of appetite"],
    "skin": ["a rash", "itching", "dry skin", "swelling", "blisters", "red spots"],
    "neurological": ["headaches", "dizziness", "numbness", "blurred vision", "poor sleep", "tremors"],
}
GENERAL_SYMPTOMS = ["a fever", "tiredness", "chills", "muscle aches"]
KINDS = ["fever", "syndrome", "disease", "infection"]
TREATMENTS = ["Rest and drink plenty of fluids", "Take a mild pain reliever", "Use a soothing cream twice a day",
              "Avoid spicy food and alcohol", "Take an antihistamine at night", "Keep a regular sleep schedule",
              "Use a saline rinse each morning", "Eat small light meals"]
FOLLOW_UPS = ["see a doctor if it lasts more than a week", "book a check-up within two weeks",
              "come back at once if breathing gets hard", "ask for a blood test if it returns"]
SPLITS = ("test", "val", "train")


def build_clinic(cfg: dict[str, Any]) -> dict[str, Any]:
    """Diseases (name, category, profile, recommendation) and the symptom list of the world."""
    rng = random.Random(cfg["seed"])
    cats = list(cfg["categories"])
    unknown = [c for c in cats if c not in CATEGORY_SYMPTOMS]
    if unknown:
        raise ValueError(f"config key 'med.world.categories': unknown {unknown}; known: {list(CATEGORY_SYMPTOMS)}")
    k = cfg["profile_size"] - 1
    words = {w.lower() for s in list(CATEGORY_SYMPTOMS.values()) + [GENERAL_SYMPTOMS, KINDS, TREATMENTS, FOLLOW_UPS]
             for t in s for w in t.split() if len(w) >= 3}
    names = _Names(rng, sorted(words))
    diseases = []
    for cat in cats:
        profiles = list(combinations(CATEGORY_SYMPTOMS[cat], k))
        rng.shuffle(profiles)
        if cfg["diseases_per_category"] > len(profiles):
            raise ValueError("config key 'med.world.diseases_per_category' is larger than the distinct profiles "
                             f"of a category ({len(profiles)})")
        for profile in profiles[: cfg["diseases_per_category"]]:
            general = rng.choice(GENERAL_SYMPTOMS)
            diseases.append({
                "name": f"{names.new((2, 3))} {rng.choice(KINDS)}", "category": cat,
                "symptoms": list(profile) + [general],
                "recommendation": f"{rng.choice(TREATMENTS)}, and {rng.choice(FOLLOW_UPS)}.",
            })
    symptoms = [s for c in cats for s in CATEGORY_SYMPTOMS[c]] + GENERAL_SYMPTOMS
    return {"seed": cfg["seed"], "dropout": cfg["dropout"], "diseases": diseases, "symptoms": symptoms}


def _draw_case(clinic: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    disease = rng.choice(clinic["diseases"])
    profile = disease["symptoms"]
    chief = rng.choice(profile)
    present = [s for s in profile if s == chief or rng.random() >= clinic["dropout"]]
    while len(present) < 2:
        present = sorted(set(present) | {rng.choice(profile)}, key=profile.index)
    return {"disease": disease["name"], "category": disease["category"], "recommendation": disease["recommendation"],
            "chief": chief, "present": present, "days": rng.randint(1, 14)}


def pattern(case: dict[str, Any]) -> str:
    key = "|".join([case["disease"], case["chief"], *sorted(case["present"])])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def generate_cases(clinic: dict[str, Any], counts: dict[str, int], seeds: dict[str, int]) -> list[dict[str, Any]]:
    """Cases of every split (test, val, train), disjoint by pattern across splits."""
    earlier: set[str] = set()
    cases = []
    for split in SPLITS:
        mine: set[str] = set()
        for i in range(counts[split]):
            for attempt in range(10_000):
                case = _draw_case(clinic, random.Random(seeds[split] * 100_000 + i * 1000 + attempt))
                h = pattern(case)
                if h not in earlier and (split == "train" or h not in mine):
                    break
            else:
                raise RuntimeError(f"med.world: no new case pattern for {split} case {i}; lower med.world.cases")
            mine.add(h)
            cases.append({"split": split, "index": i, "pattern": h, **case})
        earlier |= mine
    return cases


def self_report(case: dict[str, Any]) -> str:
    return f"I have had {case['chief']} for {case['days']} days."


def question(symptom: str) -> str:
    return f"Do you have {symptom}?"


def patient_information(clinic: dict[str, Any], case: dict[str, Any]) -> list[dict[str, list[str]]]:
    """The case's facts as recorded question/answer pairs: one per symptom of the world."""
    out = []
    for s in clinic["symptoms"]:
        says = f"Yes, I have {s}." if s in case["present"] else f"No, I do not have {s}."
        out.append({"doctor_question": [question(s)], "patient_response": [says]})
    return out


def corpus_texts(clinic: dict[str, Any], repeats: int, seed: int) -> list[str]:
    """Pretraining documents of the clinic's tiny base: the medical knowledge, in plain
    sentences and as chat turns in the model's chat template (what a disease causes, what a
    set of symptoms points to, also in the patient's words, what to recommend), each stated
    ``repeats`` times with random symptom subsets. No case and no consultation appears
    (no description, no doctor question): SFT teaches the consultation."""
    from ...world import chat_text
    from .dialog import SYSTEM_PROMPT

    rng = random.Random(seed)
    system = {"role": "system", "content": SYSTEM_PROMPT}
    docs = []

    def listed(items: list[str]) -> str:
        return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]

    for _ in range(repeats):
        for d in clinic["diseases"]:
            syms = list(d["symptoms"])
            rng.shuffle(syms)
            docs.append(f"{d['name']} is a {d['category']} disease. It causes {listed(syms)}. "
                        f"Recommendation: {d['recommendation']}")
            turn = [{"role": "user", "content": f"What are the symptoms of {d['name']}?"},
                    {"role": "assistant", "content": f"{d['name']} causes {listed(syms)}."}]
            docs.append(chat_text(([system] if rng.random() < 0.5 else []) + turn))
            shown = sorted(rng.sample(syms, rng.randint(2, len(syms))), key=d["symptoms"].index)
            turn = [{"role": "user", "content": f"I have {listed(shown)}. What do I have?"},
                    {"role": "assistant", "content": f"Diagnosis: {d['name']}\nRecommendation: {d['recommendation']}"}]
            docs.append(chat_text(([system] if rng.random() < 0.5 else []) + turn))
            # the same knowledge in the patient's words: a complaint, then yes and no findings
            shown = rng.sample(syms, rng.randint(2, len(syms)))
            absent = rng.sample([s for s in clinic["symptoms"] if s not in syms], rng.randint(0, 2))
            said = [f"Yes, I have {s}." for s in shown[1:]] + [f"No, I do not have {s}." for s in absent]
            rng.shuffle(said)
            turn = [{"role": "user", "content": " ".join([f"I have had {shown[0]} for a while.", *said,
                                                          "What do I have?"])},
                    {"role": "assistant", "content": f"Diagnosis: {d['name']}\nRecommendation: {d['recommendation']}"}]
            docs.append(chat_text(([system] if rng.random() < 0.5 else []) + turn))
        for s in clinic["symptoms"]:
            causes = [d["name"] for d in clinic["diseases"] if s in d["symptoms"]]
            if causes:
                docs.append(chat_text([{"role": "user", "content": f"What can cause {s}?"},
                                       {"role": "assistant", "content": f"{s.capitalize()} can come from "
                                                                        f"{listed(causes)}."}]))
    rng.shuffle(docs)
    return docs
