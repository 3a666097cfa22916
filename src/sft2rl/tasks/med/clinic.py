"""The embedded synthetic clinic: the default world of the medical task.

Diseases belong to organ-system categories. Each disease has a symptom profile
(``profile_size - 1`` symptoms of its category and one general symptom; the diseases of a
category share symptoms, and a general symptom belongs to diseases of several categories)
and a recommendation. A patient case has one disease; every profile symptom other than the
chief complaint is present with probability ``1 - dropout`` (at least two present), symptoms
outside the profile are absent. The patient reports the chief complaint and, with
probability ``volunteer``, a second present symptom; the rest are findings the doctor must
ask about.

As in real MTMedDialog rows, a case records only part of what could be asked
(``patient_information``): the reported symptoms always, every other symptom of the
disease's category and every general symptom with probability ``recorded.related``, a
symptom of another category with probability ``recorded.other``. The simulated patient
answers "Sorry, I do not know." to the rest, so a doctor that asks at random mostly hears
"Sorry" and one that asks about the likely diseases mostly gets answers.

Everything is a pure function of ``med.world.seed`` (``random.Random`` seeded with integers;
no ``hash()``). Splits are drawn test first, then validation, then train, and a case whose
*consultation* (``key``: the scripted doctor's dialogue with the numbers masked, see
:func:`sft2rl.tasks.med.data.consultation_key`) occurs in an earlier split is drawn again:
no test consultation is ever trained on. Test and validation cases are distinct
consultations; train cases may repeat a train consultation.
"""
from __future__ import annotations

import hashlib
import random
import re
from itertools import combinations
from typing import Any, Callable

from ...text import Names

#: the symptoms of each organ system, as the patient says them ("I have had a cough ...").
#: Every content word (what is left once the English stop words are removed) belongs to one
#: symptom only, so the patient never mistakes one symptom's question for another's.
CATEGORY_SYMPTOMS = {
    "respiratory": ["a cough", "a sore throat", "a runny nose", "shortness of breath", "wheezing", "sneezing",
                    "hoarseness", "chest tightness"],
    "digestive": ["nausea", "stomach cramps", "diarrhea", "heartburn", "bloating", "loss of appetite", "vomiting",
                  "constipation"],
    "skin": ["a rash", "itching", "dry skin", "swelling", "blisters", "red spots", "peeling", "hives"],
    "neurological": ["headaches", "dizziness", "numbness", "blurred vision", "poor sleep", "tremors", "confusion",
                     "tingling"],
    "musculoskeletal": ["joint pain", "neck stiffness", "a weak grip", "limping", "knee clicking",
                        "elbow tenderness", "swollen ankles", "jaw locking"],
}
GENERAL_SYMPTOMS = ["a fever", "tiredness", "chills", "muscle aches", "night sweats", "thirst"]
KINDS = ["fever", "syndrome", "disease", "infection"]
TREATMENTS = ["Rest and drink plenty of fluids", "Take a mild pain reliever", "Use a soothing cream twice a day",
              "Avoid spicy food and alcohol", "Take an antihistamine at night", "Keep a regular sleep schedule",
              "Use a saline rinse each morning", "Eat small light meals"]
FOLLOW_UPS = ["see a doctor if it lasts more than a week", "book a check-up within two weeks",
              "come back at once if breathing gets hard", "ask for a blood test if it returns"]
SPLITS = ("test", "val", "train")
#: profiles of one category share at most this many symptoms (they overlap, and stay tellable apart)
MAX_SHARED = 2


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
    names = Names(rng, sorted(words))
    diseases = []
    generals = []  # the general symptoms in turn, so each belongs to diseases of several categories
    for cat in cats:
        profiles = list(combinations(CATEGORY_SYMPTOMS[cat], k))
        rng.shuffle(profiles)
        chosen: list[tuple[str, ...]] = []
        for p in profiles:
            if len(chosen) == cfg["diseases_per_category"]:
                break
            if all(len(set(p) & set(q)) <= min(MAX_SHARED, k - 1) for q in chosen):
                chosen.append(p)
        if len(chosen) < cfg["diseases_per_category"]:
            raise ValueError("config key 'med.world.diseases_per_category' is larger than the profiles of a category "
                             f"that share at most {MAX_SHARED} symptoms ({len(chosen)})")
        for profile in chosen:
            if not generals:
                generals = GENERAL_SYMPTOMS[:]
                rng.shuffle(generals)
            general = generals.pop()
            diseases.append({
                "name": f"{names.new((2, 3))} {rng.choice(KINDS)}", "category": cat,
                "symptoms": list(profile) + [general],
                "recommendation": f"{rng.choice(TREATMENTS)}, and {rng.choice(FOLLOW_UPS)}.",
            })
    symptoms = [s for c in cats for s in CATEGORY_SYMPTOMS[c]] + GENERAL_SYMPTOMS
    return {"seed": cfg["seed"], "dropout": cfg["dropout"], "recorded": dict(cfg["recorded"]),
            "category_symptoms": {c: CATEGORY_SYMPTOMS[c] for c in cats}, "general": GENERAL_SYMPTOMS,
            "diseases": diseases, "symptoms": symptoms}


def related_symptoms(clinic: dict[str, Any], category: str) -> set[str]:
    """The symptoms of a category's diseases' organ system and the general ones."""
    return set(CATEGORY_SYMPTOMS.get(category, [])) | set(GENERAL_SYMPTOMS)


def _draw_case(clinic: dict[str, Any], world: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    disease = rng.choice(clinic["diseases"])
    profile = disease["symptoms"]
    chief = rng.choice(profile)
    present = [s for s in profile if s == chief or rng.random() >= clinic["dropout"]]
    while len(present) < 2:
        present = sorted(set(present) | {rng.choice(profile)}, key=profile.index)
    others = [s for s in present if s != chief]
    volunteered = rng.choice(others) if rng.random() < world["volunteer"] else None
    related = related_symptoms(clinic, disease["category"])
    recorded = [s for s in clinic["symptoms"]
                if s in (chief, volunteered)
                or rng.random() < (world["recorded"]["related"] if s in related else world["recorded"]["other"])]
    return {"disease": disease["name"], "category": disease["category"], "recommendation": disease["recommendation"],
            "chief": chief, "volunteered": volunteered, "present": present, "recorded": recorded,
            "days": rng.randint(1, 14)}


def pattern(case: dict[str, Any]) -> str:
    key = "|".join([case["disease"], case["chief"], str(case.get("volunteered")), *sorted(case["present"]),
                    "#", *sorted(case.get("recorded", []))])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def generate_cases(clinic: dict[str, Any], world: dict[str, Any],
                   key: Callable[[dict[str, Any]], str] | None = None) -> list[dict[str, Any]]:
    """Cases of every split (test, val, train), disjoint across splits by ``key`` (default:
    :func:`pattern`; the workflow passes the masked consultation). A case's ``redrawn``
    counts the draws before it whose key was taken."""
    key = key or pattern
    counts, seeds = world["cases"], world["case_seeds"]
    earlier: set[str] = set()
    cases = []
    for split in SPLITS:
        mine: set[str] = set()
        for i in range(counts[split]):
            for attempt in range(10_000):
                case = _draw_case(clinic, world, random.Random(seeds[split] * 100_000 + i * 1000 + attempt))
                h = key(case)
                if h not in earlier and (split == "train" or h not in mine):
                    break
            else:
                raise RuntimeError(f"med.world: no new consultation for {split} case {i}; lower med.world.cases")
            mine.add(h)
            cases.append({"split": split, "index": i, "pattern": pattern(case), "key": h, "redrawn": attempt,
                          **case})
        earlier |= mine
    return cases


def self_report(case: dict[str, Any]) -> str:
    also = f" I also have {case['volunteered']}." if case.get("volunteered") else ""
    return f"I have had {case['chief']} for {case['days']} days.{also}"


SELF_REPORT_RE = re.compile(r"I have had (.+?) for \d+ days?\.(?: I also have (.+?)\.)?")


def read_self_report(text: str) -> tuple[str | None, str | None]:
    """The chief complaint and the volunteered symptom of a description (None where absent)."""
    m = SELF_REPORT_RE.search(text)
    return (m.group(1), m.group(2)) if m else (None, None)


def question(symptom: str) -> str:
    return f"Do you have {symptom}?"


def answer(symptom: str, present: bool) -> str:
    return f"Yes, I have {symptom}." if present else f"No, I do not have {symptom}."


def patient_information(clinic: dict[str, Any], case: dict[str, Any]) -> list[dict[str, list[str]]]:
    """The case's recorded facts as question/answer pairs: one per recorded symptom (every
    symptom of the world when the case records no list)."""
    recorded = set(case.get("recorded", clinic["symptoms"]))
    return [{"doctor_question": [question(s)], "patient_response": [answer(s, s in case["present"])]}
            for s in clinic["symptoms"] if s in recorded]


def corpus_texts(clinic: dict[str, Any], repeats: int, seed: int) -> list[str]:
    """Pretraining documents of the clinic's tiny base: the medical knowledge, in plain
    sentences and as chat turns in the model's chat template (what a disease causes, what a
    set of symptoms points to, also in the patient's words, what to recommend), each stated
    ``repeats`` times with random symptom subsets. No case and no consultation appears
    (no description, no doctor question, no "Sorry"): SFT teaches the consultation."""
    from ...text import chat_text
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
            absent = rng.sample([s for s in clinic["symptoms"] if s not in syms], rng.randint(0, 3))
            said = [answer(s, True) for s in shown[1:]] + [answer(s, False) for s in absent]
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
