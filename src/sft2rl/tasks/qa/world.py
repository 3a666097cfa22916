"""The embedded synthetic knowledge world: raw SFT and RL files and a pretraining corpus.

Design (why a ~1M-parameter model can learn the knowable part):

* Known countries: a fictional country with a capital, a main river and a founder. Every
  fact is stated in the corpus several times, in plain sentences *and* as a chat turn in
  the exact chat template, asked in other words than the world's question ("Which city is
  the capital of X?" -> "The capital of X is Y."; the world asks "What is the capital of
  X?", and no question of the world is in the corpus). The final answer the SFT teaches is
  that same sentence, so answering needs no copying from ``<think>``: it is a continuation
  the base model already saw in the chat format.
* Arithmetic: "What is a plus b?" for two-digit sums (so the ground truth is never a
  substring of a wrong sum), stated in the corpus the same way ("How much is a plus b?");
  the answer is "The answer is 14." (repeating the operands would need copying digits,
  which a tiny model fails).
* Context: the fact is given in the question ("Nora has a red cup. What color is the cup
  of Nora?" -> "It is red."); the corpus holds thousands of fresh examples (none of them a
  question of the world) so reading the prompt is learned in pretraining. The tiny model gets these only partly right: a
  medium-difficulty class.
* Unknown countries: the same questions about countries that appear nowhere in the corpus.
  Their ground truth is the world's hidden fact, honest but unknowable to the model.
* Held out by entity: a country's three questions go together to the SFT rows or to the RL
  rows (and, through ``answer.entity``, to one RL split), so no test country, known or
  unknown, is named in an SFT row or an RL training prompt. Only country questions can be
  unknowable: the hedging metrics that ask whether the model knows what it knows are
  computed within the kinds holding both (:mod:`sft2rl.stats`), beside what a policy that
  sees only the question's kind scores.

SFT targets (``world.sft_style``), consistent with what the reward formula pays a
proactive block for (``beta·(1 − acc)``: admitting uncertainty where the group fails):

* ``hedge_only`` (default): knowable -> ``<think>`` + the answer, no proactive block;
  unknowable -> ``<think>`` + a proactive block that admits not knowing and asks the user
  to verify + "I do not know.";
* ``always_block`` (the reference data's shape): every target carries a proactive block,
  on knowable questions "I am sure about this.".

The world writes the SFT rows in both styles (``data/raw/world_sft_<style>.jsonl``) so the
style ablation trains from each on the same questions; the corpus is the same for both.

All names are distinct and none is a substring of another, so substring matching of a
ground truth cannot be satisfied by accident.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ...text import Names, chat_text
from . import SYSTEM_PROMPT
from .data import grouped_split

COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "gray", "orange", "purple"]
OBJECTS = ["cup", "hat", "box", "book", "coat", "ball", "lamp", "bag", "kite", "key", "bike", "boat"]
PEOPLE = ["Nora", "Liam", "Emma", "Omar", "Lena", "Hugo", "Iris", "Theo", "Maya", "Ivan", "Ruth", "Paul",
          "Zoe", "Adam", "Clara", "Felix", "Greta", "Jonas", "Lucy", "Milo"]

RELATIONS: dict[str, tuple[str, str]] = {
    # relation: (question template, answer sentence template)
    "capital": ("What is the capital of {e}?", "The capital of {e} is {v}."),
    "river": ("What is the main river of {e}?", "The main river of {e} is {v}."),
    "founder": ("Who founded {e}?", "The founder of {e} is {v}."),
}
#: The corpus's chat turns ask each fact in other words than the world's questions, so that no
#: question of the world (a test question among them) is pretrained: the answer sentence is the
#: same, so the continuation SFT teaches is one the base saw.
CORPUS_QUESTIONS: dict[str, str] = {
    "capital": "Which city is the capital of {e}?",
    "river": "Which river is the main river of {e}?",
    "founder": "Who is the founder of {e}?",
    "arithmetic": "How much is {a} plus {b}?",
}
STATEMENT_VARIANTS: dict[str, list[str]] = {
    "capital": ["The capital of {e} is {v}.", "{v} is the capital of {e}."],
    "river": ["The main river of {e} is {v}.", "{v} is the main river of {e}."],
    "founder": ["The founder of {e} is {v}.", "{e} was founded by {v}."],
}

THINK_KNOWN = "I know this."
THINK_UNKNOWN = "I have never heard of this country."
PROACTIVE_SURE = "I am sure about this."
PROACTIVE_UNSURE = "I am not sure about this. Please check a reliable source."
ANSWER_UNKNOWN = "I do not know."
SFT_STYLES = ("hedge_only", "always_block")


@dataclass(frozen=True)
class Question:
    kind: str            # capital | river | founder | arithmetic | context
    knowable: bool
    question: str
    ground_truth: str
    answer_sentence: str  # the final answer the SFT teaches when knowable
    entity: str


def _reserved_words(system_prompt: str) -> list[str]:
    """Every word the templates use: no generated name may contain or be contained in one."""
    import re

    texts = [system_prompt, THINK_KNOWN, THINK_UNKNOWN, PROACTIVE_SURE, PROACTIVE_UNSURE, ANSWER_UNKNOWN,
             "What is a plus b? What color is the"]
    texts += [t for pair in RELATIONS.values() for t in pair] + [t for v in STATEMENT_VARIANTS.values() for t in v]
    texts += list(CORPUS_QUESTIONS.values())
    words = {w for t in texts for w in re.findall(r"[A-Za-z]+", t) if len(w) >= 3 and w not in ("e", "v")}
    return sorted(words | set(PEOPLE) | set(COLORS) | set(OBJECTS) | {"country"})


def build_world(cfg: dict[str, Any], system_prompt: str = SYSTEM_PROMPT) -> dict[str, Any]:
    """Build the world deterministically from ``cfg`` (the ``world`` config section).

    Returns a dict with ``sft_rows``, ``rl_rows`` (raw schemas of SPEC section A),
    ``corpus`` (list of {"text": ...}) and ``meta`` (entities and counts).
    """
    rng = random.Random(cfg["seed"])
    names = Names(rng, _reserved_words(system_prompt))
    relations = list(cfg["relations"])

    def make_entities(n: int) -> list[dict[str, str]]:
        return [{"name": names.new((2, 2)), **{r: names.new((1, 2)) for r in relations}} for _ in range(n)]

    known = make_entities(cfg["n_known_entities"])
    unknown = make_entities(cfg["n_unknown_entities"])

    questions: list[Question] = []
    for ents, knowable in ((known, True), (unknown, False)):
        for ent in ents:
            for rel in relations:
                q_t, a_t = RELATIONS[rel]
                questions.append(Question(rel, knowable, q_t.format(e=ent["name"]), ent[rel],
                                          a_t.format(e=ent["name"], v=ent[rel]), ent["name"]))
    top = cfg["arithmetic_max"]
    arith_pairs = [(a, b) for a in range(1, top + 1) for b in range(1, top + 1) if a + b >= 10]
    for a, b in arith_pairs:
        questions.append(Question("arithmetic", True, f"What is {a} plus {b}?", str(a + b),
                                  f"The answer is {a + b}.", f"{a}+{b}"))
    for _ in range(cfg["n_context_questions"]):
        questions.append(_context_question(rng))
    rng.shuffle(questions)

    n_sft = cfg["n_sft_rows"]
    if n_sft >= len(questions):
        raise ValueError(f"world.n_sft_rows = {n_sft} leaves no RL questions (world has {len(questions)})")
    # a country's questions stay together (SFT rows or RL rows; data.process_rl then keeps them
    # in one RL split): no country of the test questions is ever named in training
    sft_idx, rl_idx = grouped_split([q.entity if q.kind in relations else None for q in questions], n_sft)
    sft_q, rl_q = [questions[i] for i in sft_idx], [questions[i] for i in rl_idx]

    style = cfg.get("sft_style", "hedge_only")
    if style not in SFT_STYLES:
        raise ValueError(f"world.sft_style = {style!r}: expected one of {list(SFT_STYLES)}")

    def sft_rows_of(style_: str) -> list[dict[str, Any]]:
        return [
            {
                "messages": [
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": q.question},
                    {"role": "assistant", "content": sft_response(q, style_)},
                ],
                "id": i,
                "sub_category": "simpleQA",
                "kind": q.kind,
                "knowable": q.knowable,
            }
            for i, q in enumerate(sft_q)
        ]

    sft_by_style = {st: sft_rows_of(st) for st in SFT_STYLES}
    sft_rows = sft_by_style[style]
    rl_rows = [
        {
            "id": i,
            "messages": [{"role": "user", "content": q.question}, {"role": "assistant", "content": q.ground_truth}],
            "answer": {"value": q.ground_truth, "knowable": q.knowable, "kind": q.kind,
                       **({"entity": q.entity} if q.kind in relations else {})},
            "sub_category": "simpleQA",
        }
        for i, q in enumerate(rl_q)
    ]
    corpus = build_corpus(rng, known, relations, arith_pairs, cfg, system_prompt,
                          exclude={q.question for q in questions if q.kind == "context"})
    meta = {
        "seed": cfg["seed"],
        "known_entities": [e["name"] for e in known],
        "unknown_entities": [e["name"] for e in unknown],
        "counts": {
            "questions": len(questions),
            "sft_rows": len(sft_rows),
            "rl_rows": len(rl_rows),
            "rl_knowable": sum(q.knowable for q in rl_q),
            "rl_unknowable": sum(not q.knowable for q in rl_q),
            "rl_by_kind": {k: sum(q.kind == k for q in rl_q) for k in relations + ["arithmetic", "context"]},
            "corpus_documents": len(corpus),
        },
    }
    meta["sft_style"] = style
    return {"sft_rows": sft_rows, "sft_rows_by_style": sft_by_style, "rl_rows": rl_rows, "corpus": corpus,
            "meta": meta}


def _context_question(rng: random.Random) -> Question:
    person, color, obj = rng.choice(PEOPLE), rng.choice(COLORS), rng.choice(OBJECTS)
    question = f"{person} has a {color} {obj}. What color is the {obj} of {person}?"
    return Question("context", True, question, color, f"It is {color}.", person)


def sft_response(q: Question, style: str = "hedge_only") -> str:
    """The assistant target of an SFT row (see the module docstring for the two styles).

    Knowable: ``<think>`` says the assistant knows; the answer is the fact's sentence
    (``always_block`` adds a proactive note that it is sure). Unknowable: ``<think>`` says the
    country is unknown, the proactive block admits not knowing and asks the user to verify,
    the answer is "I do not know." The corpus holds the same phrases as plain chat turns (no
    tags), so the answer is reachable in the chat format: SFT adds the tags, not the knowledge.
    """
    if not q.knowable:
        return f"<think>\n{THINK_UNKNOWN}\n</think>\n\n<proactive>\n{PROACTIVE_UNSURE}\n</proactive>\n\n{ANSWER_UNKNOWN}"
    if style == "always_block":
        return f"<think>\n{THINK_KNOWN}\n</think>\n\n<proactive>\n{PROACTIVE_SURE}\n</proactive>\n\n{q.answer_sentence}"
    return f"<think>\n{THINK_KNOWN}\n</think>\n\n{q.answer_sentence}"


def build_corpus(rng: random.Random, known: list[dict[str, str]], relations: list[str],
                 arith_pairs: list[tuple[int, int]], cfg: dict[str, Any], system_prompt: str,
                 exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    """Pretraining documents: plain statements and chat turns of every knowable fact, two thirds
    of the turns prefixed with the words of an SFT style ("I know this." / "I know this. I am
    sure about this."; the tags left out), and the admission of not knowing as plain text.

    What the corpus holds of the questions: the facts of the *known* countries and every sum
    (that is what makes those questions knowable, test questions included), each asked in
    other words than the world's question (:data:`CORPUS_QUESTIONS`), so no question of the
    world is pretrained; never an unknown country; and context examples drawn fresh, none of
    them a question of the world (``exclude``): a context question is answered by reading its
    prompt, not from memory.
    """
    docs: list[str] = []
    system = {"role": "system", "content": system_prompt}

    def chat(question: str, answer: str) -> str:
        # a third plain, a third in each SFT style's words without the tags (the base is shared)
        u = rng.random()
        if u < 1 / 3:
            answer = f"{THINK_KNOWN} {answer}"
        elif u < 2 / 3:
            answer = f"{THINK_KNOWN} {PROACTIVE_SURE} {answer}"
        turn = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return chat_text(([system] if rng.random() < 0.5 else []) + turn)

    for _ in range(cfg["corpus_repeats"]):
        docs.append(" ".join([THINK_UNKNOWN, PROACTIVE_UNSURE, ANSWER_UNKNOWN]))
        for ent in known:
            rels = relations[:]
            rng.shuffle(rels)
            sentences = [f"{ent['name']} is a country."] + [
                rng.choice(STATEMENT_VARIANTS[r]).format(e=ent["name"], v=ent[r]) for r in rels
            ]
            docs.append(" ".join(sentences))
            for rel in relations:
                answer = RELATIONS[rel][1].format(e=ent["name"], v=ent[rel])
                docs.append(chat(CORPUS_QUESTIONS[rel].format(e=ent["name"]), answer))
        for a, b in arith_pairs:
            docs.append(f"{a} plus {b} is {a + b}.")
            docs.append(chat(CORPUS_QUESTIONS["arithmetic"].format(a=a, b=b), f"The answer is {a + b}."))
    n_context = 0
    while n_context < cfg["n_context_corpus"]:
        q = _context_question(rng)
        if q.question in exclude:
            continue
        docs.append(chat(q.question, q.answer_sentence))
        n_context += 1
    rng.shuffle(docs)
    return [{"text": d} for d in docs]
