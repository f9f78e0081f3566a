"""The recipe that turns a handful of corrections into a better character, not a parrot.

Measured on the default model (docs/training.md, "The recipe"): trained on the prompts they
were given — whose retrieved knowledge lacks the corrected answer — a dozen corrections teach
the LoRA to answer from its weights and ignore the knowledge block; persona facts drop and
the trained lines come back for unrelated messages. So, for feedback records:

- **knowledge in the prompt** (retrieval-augmented fine-tuning, RAFT): each correction is
  trained with its answer among the prompt's retrieved knowledge — beside
  ``knowledge_distractors`` other corrections, as retrieval brings several — so the LoRA
  learns to use the right line of the knowledge block rather than to recite; replayed
  answers train beside corrections that do not answer them, so it learns to leave an
  unrelated line alone;
- **learnt as knowledge**: the version keeps every correction (its parent's too) as
  question–answer knowledge (``knowledge.jsonl``), which the bot retrieves for that version —
  a corrected fact then comes back for the question asked in any words;
- **replay**: the character's own knowledge facts asked plainly (the fact retrieved, its
  file's answer as the completion), and the current version's own answers to everyday
  prompts (self-distillation, generated once per version and cached), are mixed in, so the
  rest of the character stays where it was;
- **held out by conversation**, never a single pair; fewer than ``min_heldout`` records
  all train, and the paraphrased corrections validate.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.characters import Character
from bot.config import TrainingSettings
from bot.knowledge import LEARNT, fact_text, read_facts
from training.asking import Asker, serving_sampling
from training.everyday import REPLAY_PROMPTS
from training.quality import copies
from training.train_data import Record

REPLAY_VERSION = 2  # bump when own answers are made differently: the cache is keyed by it
_KNOWS = re.compile(r"^What .+ knows:$", re.MULTILINE)


@dataclass(frozen=True)
class Learnt:
    """A correction as knowledge: the question it answers, and the answer."""

    question: str
    answer: str
    paraphrases: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer}


@dataclass
class Recipe:
    """What a version trains and validates on, and what it keeps as knowledge."""

    train: list[Record]
    validation: list[Record]
    learnt: list[Learnt]  # all of it: the parent's and this version's corrections
    corrections: list[Learnt]  # this version's own, with their paraphrases
    notes: list[str] = field(default_factory=list)  # what was held out and mixed in, said once
    counts: dict[str, int] = field(default_factory=dict)
    taught: list[str] = field(default_factory=list)  # answers taught (feedback, persona)


def question_of(prompt: Sequence[dict[str, str]]) -> str:
    """The message a record's prompt answers: its last user turn."""
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1].strip() if users else ""


def with_fact(prompt: list[dict[str, str]], fact: str, character: str) -> list[dict[str, str]]:
    """``prompt`` with ``fact`` first in its system message's knowledge (where retrieval
    would put the closest entry), the section added if the prompt had none."""
    if not prompt or prompt[0].get("role") != "system":
        prompt = [{"role": "system", "content": f"You are {character}."}, *prompt]
    system = prompt[0]["content"]
    line = f"- {fact.strip()}"
    if line in system.splitlines():
        return prompt
    found = _KNOWS.search(system)
    if found:
        system = system[: found.end()] + "\n" + line + system[found.end() :]
    else:
        system = f"{system.rstrip()}\n\nWhat {character} knows:\n{line}"
    return [{**prompt[0], "content": system}, *prompt[1:]]


def with_facts(
    prompt: list[dict[str, str]], facts: Sequence[Learnt], character: str
) -> list[dict[str, str]]:
    """``prompt`` with each of ``facts`` in its knowledge, in the order given."""
    for fact in reversed(facts):
        prompt = with_fact(prompt, fact_text(fact.question, fact.answer), character)
    return prompt


def read_learnt(lora_path: str | None) -> list[Learnt]:
    """The knowledge a version learnt (none for the bare base model)."""
    if lora_path is None or not (Path(lora_path) / LEARNT).is_file():
        return []
    found = []
    for line in (Path(lora_path) / LEARNT).read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            found.append(Learnt(item["question"], item["answer"]))
    return found


def write_learnt(folder: Path, learnt: Sequence[Learnt]) -> None:
    text = "".join(json.dumps(k.as_json(), ensure_ascii=False) + "\n" for k in learnt)
    (folder / LEARNT).write_text(text, encoding="utf-8")


def merged(older: Sequence[Learnt], newer: Sequence[Learnt]) -> list[Learnt]:
    """``older`` then ``newer``; a question corrected again keeps its newest answer."""
    by_question: dict[str, Learnt] = {}
    for item in [*older, *newer]:
        by_question.pop(item.question.lower(), None)
        by_question[item.question.lower()] = item
    return list(by_question.values())


def split_by_conversation(
    records: Sequence[Record], fraction: float, minimum: int, seed: int
) -> tuple[list[Record], list[Record], str]:
    """Hold out whole conversations (about ``fraction`` of the records); below ``minimum``
    records, or with one conversation, hold out nothing. Returns (train, held out, note)."""
    groups: dict[Any, list[Record]] = {}
    for index, record in enumerate(records):
        key = (record.get("meta") or {}).get("conversation_id", f"record {index}")
        groups.setdefault(key, []).append(record)
    if len(records) < minimum or len(groups) < 2 or fraction <= 0:
        why = f"fewer than {minimum} records" if len(records) < minimum else "one conversation"
        return list(records), [], f"all {len(records)} feedback records train ({why})"
    keys = sorted(groups, key=str)
    random.Random(seed).shuffle(keys)
    held: list[Record] = []
    chosen = []
    for key in keys[:-1]:  # at least one conversation always trains
        if len(held) >= fraction * len(records):
            break
        held += groups[key]
        chosen.append(key)
    train = [r for key in keys if key not in chosen for r in groups[key]]
    note = f"{len(held)} records of {len(chosen)} conversations held out, {len(train)} train"
    return train, held, note


async def own_answers(
    asker: Asker, character: Character, count: int, cache_dir: Path
) -> list[Record]:
    """The current version's answers to ``count`` everyday prompts, as users get them
    (the character's sampling, seeded), cached per version. An answer that near-copies one
    kept before is dropped: a small model's stock line ("I'm here to help with any
    project…"), replayed for several prompts, is learnt as the answer to everything
    (Pip's distinct replies fell to 59–68% with it, docs/training.md)."""
    prompts = list(REPLAY_PROMPTS[:count])
    if not prompts:
        return []
    key = hashlib.sha256(
        json.dumps(
            [REPLAY_VERSION, character.lora or "base", prompts, _persona_key(character)]
        ).encode()
    ).hexdigest()[:16]
    cached = cache_dir / f"replay-{key}.jsonl"
    if cached.is_file():
        return [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    sampling = serving_sampling(asker.config, character)
    built, answers = await asker.ask(character, prompts, sampling)
    records: list[Record] = []
    kept: list[str] = []
    for prompt, answer in zip(built, answers, strict=True):
        if not answer.strip() or any(copies(answer, earlier) for earlier in kept):
            continue
        kept.append(answer)
        records.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    cache_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    cached.write_text(text, encoding="utf-8")
    return records


def _persona_key(character: Character) -> list[str]:
    return [character.system_prompt, character.description, character.personality]


async def persona_records(
    asker: Asker, character: Character, count: int, seed: int
) -> list[Record]:
    """Up to ``count`` of the character's knowledge facts, asked plainly with the fact
    retrieved, answered with the file's own answer."""
    facts = [f for name in character.knowledge for f in read_facts(Path(name)) if f.answer]
    random.Random(seed).shuffle(facts)
    chosen = facts[:count]
    records = []
    for fact in chosen:
        prompt = with_fact(await asker.prompt(character, fact.key), fact.text, character.name)
        records.append(
            {"prompt": prompt, "completion": [{"role": "assistant", "content": fact.answer}]}
        )
    return records


def correction_of(record: Record) -> Learnt | None:
    """A feedback record made from a correction, as knowledge (None for a liked reply)."""
    meta = record.get("meta") or {}
    if meta.get("answer_from") != "correction" or "completion" not in record:
        return None
    question = question_of(record["prompt"])
    answer = str(record["completion"][-1]["content"]).strip()
    if not question or not answer:
        return None
    return Learnt(question, answer, tuple(meta.get("paraphrases") or ()))


async def build_recipe(
    asker: Asker,
    character: Character,
    settings: TrainingSettings,
    feedback: Sequence[Record],
    parent_path: str | None,
    cache_dir: Path,
) -> Recipe:
    """The records to train and validate on from the character's new ``feedback`` (sft
    records with their ``meta``), and the knowledge the version will keep."""
    train, held, note = split_by_conversation(
        feedback, settings.val_fraction, settings.min_heldout, settings.seed
    )
    corrections = [c for r in train if (c := correction_of(r)) is not None]
    learnt = merged(read_learnt(parent_path), corrections) if settings.learn_as_knowledge else []
    records = []
    rng = random.Random(settings.seed)
    for record in train:
        correction = correction_of(record)
        if settings.knowledge_in_prompt and correction is not None:
            others = [c for c in learnt or corrections if c.question != correction.question]
            distractors = rng.sample(others, min(settings.knowledge_distractors, len(others)))
            facts = [correction, *distractors]
            rng.shuffle(facts)  # the answer among the others, not always first
            record = {**record, "prompt": with_facts(record["prompt"], facts, character.name)}
        records.append(record)
    recipe = Recipe(list(records), list(held), learnt, corrections, [note])
    speaking = asker.character(character.name, parent_path)
    persona = await persona_records(asker, speaking, settings.persona_replay, settings.seed)
    own = await own_answers(asker, speaking, settings.replay, cache_dir)
    if settings.knowledge_in_prompt and corrections:
        # Replayed answers with corrections in the knowledge that do not answer them: the
        # LoRA learns to leave an unrelated knowledge line alone, not to recite it.
        own = [_beside(r, corrections, settings.knowledge_distractors, rng, character) for r in own]
    recipe.train += persona + own
    # What a leak copies: what was taught, not the model's own replayed words.
    recipe.taught = [r["completion"][-1]["content"] for r in [*records, *persona]]
    random.Random(settings.seed).shuffle(recipe.train)
    recipe.counts = {
        "feedback": len(records),
        "corrections": len(corrections),
        "persona replay": len(persona),
        "own answers": len(own),
        "held out": len(held),
    }
    if persona or own:
        recipe.notes.append(
            f"mixed in {len(persona)} persona facts and {len(own)} of the current "
            "version's own answers to everyday prompts"
        )
    if not held:
        recipe.validation = await paraphrase_validation(asker, character, corrections)
        asked = len(recipe.validation)
        recipe.notes.append(
            f"validation: {asked} paraphrased corrections"
            if asked
            else "no validation: no paraphrases of the corrections yet"
        )
    return recipe


def _beside(
    record: Record, facts: Sequence[Learnt], count: int, rng: random.Random, character: Character
) -> Record:
    chosen = rng.sample(list(facts), min(count, len(facts)))
    return {**record, "prompt": with_facts(record["prompt"], chosen[::-1], character.name)}


async def paraphrase_validation(
    asker: Asker, character: Character, corrections: Sequence[Learnt]
) -> list[Record]:
    """Each correction's paraphrases, asked fresh, with the correction as the reference."""
    records = []
    for correction in corrections:
        for paraphrase in correction.paraphrases:
            prompt = await asker.prompt(character, paraphrase)
            fact = fact_text(correction.question, correction.answer)
            records.append(
                {
                    "prompt": with_fact(prompt, fact, character.name),
                    "completion": [{"role": "assistant", "content": correction.answer}],
                }
            )
    return records
