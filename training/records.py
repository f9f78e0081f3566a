"""Training records built from stored feedback, one rule set for every format.

Each record is trained on the prompt stored with the reply — the exact messages the model
saw, never rebuilt from today's persona — and carries a ``meta`` object saying where it came
from. The formats are TRL's dataset types:

- ``sft``: conversational prompt–completion, so the loss falls on the answer only;
- ``sft-messages``: the same as one ``messages`` list, for tools that want that form;
- ``dpo``: preference (``prompt``/``chosen``/``rejected``): chosen is a correction, the
  sibling a person kept (swipes) or a liked sibling; rejected is a 👎 or swiped-away reply;
- ``kto``: unpaired preference (``prompt``/``completion``/``label``);
- ``review``: an editable record for a person, read back by ``charbot import-corrections``.

Every record carries the reply's paraphrases — other wordings of the question it answers,
which the next LoRA's evaluation asks — in ``meta`` (the review record: as an editable
``paraphrases`` list).

Replies arrive grouped by the message they answer (regenerated siblings together); a group
is all a preference pair needs, so nothing else is held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from storage.feedback import CorrectionRow, FeedbackRow
from storage.votes import VoteRule

FORMATS = ("sft", "sft-messages", "dpo", "kto", "review")


@dataclass(frozen=True, slots=True)
class Built:
    """A record, and whether a reviewer excluded the reply it was made from."""

    record: dict[str, Any]
    excluded: bool
    skipped: str | None = None  # why the record is not an example (counted, not written)


SAME_AS_REPLY = "correction identical to the reply it corrects"


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def better(row: FeedbackRow) -> CorrectionRow | None:
    """The correction that counts: a reviewer's accepted one, else the newest."""
    if not row.corrections:
        return None
    accepted = [c for c in row.corrections if c.accepted]
    return (accepted or list(row.corrections))[-1]


def meta(row: FeedbackRow) -> dict[str, Any]:
    """Where a record came from: reply, conversation, character, version, votes, authors,
    and the other wordings of its question that evaluation asks (``paraphrases``)."""
    return {
        "reply_id": row.id,
        "conversation_id": row.conversation_id,
        "parent_id": row.parent_id,
        "character": row.character,
        "lora_version": row.lora_version,
        "model": row.model,
        "platform": row.platform,
        "up": row.up,
        "down": row.down,
        "created_at": row.created_at,
        "correction_authors": [c.author for c in row.corrections],
        "correction_sources": [c.source for c in row.corrections],
        "corrected_at": row.corrections[-1].created_at if row.corrections else None,
        "swipe": None if row.kept_id is None else ("kept" if row.kept_id == row.id else "away"),
        "paraphrases": list(row.paraphrases),
    }


def build(fmt: str, group: Sequence[FeedbackRow], votes: VoteRule) -> Iterator[Built]:
    """The records of one format from one group of sibling replies (same parent)."""
    if fmt in ("sft", "sft-messages"):
        yield from _sft(group, votes, messages=fmt == "sft-messages")
    elif fmt == "dpo":
        yield from _dpo(group, votes)
    elif fmt == "kto":
        yield from _kto(group, votes)
    elif fmt == "review":
        yield from _review(group)
    else:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def _sft(group: Sequence[FeedbackRow], votes: VoteRule, *, messages: bool) -> Iterator[Built]:
    for row in group:
        correction = better(row)
        if correction is None and not votes.good(row):
            continue
        if correction is not None and correction.text.strip() == row.text.strip():
            # Nothing to learn, and it would teach the model that the 👎 reply was right.
            yield Built({}, False, SAME_AS_REPLY)
            continue
        answer = correction.text if correction is not None else row.text
        prompt = json.loads(row.prompt_json)
        info = {**meta(row), "answer_from": "correction" if correction else "reply"}
        if messages:
            record = {"messages": [*prompt, *assistant(answer)], "meta": info}
        else:
            record = {"prompt": prompt, "completion": assistant(answer), "meta": info}
        yield Built(record, row.excluded is not None)


def _dpo(group: Sequence[FeedbackRow], votes: VoteRule) -> Iterator[Built]:
    # The sibling a person kept (swipes), and the best liked sibling — highest score, then
    # oldest — that a reviewer did not exclude.
    kept = next((r for r in group if r.kept_id == r.id and r.excluded is None), None)
    liked = sorted(
        (r for r in group if votes.good(r) and r.excluded is None), key=lambda r: (-r.score, r.id)
    )
    for row in group:
        swiped_away = kept is not None and row.kept_id not in (None, row.id)
        # Rejected: a 👎 reply, or one swiped away (unless people liked it after all).
        if not (votes.bad(row) or (swiped_away and not votes.good(row))):
            continue
        correction = better(row)
        sibling = next((r for r in liked if r.text != row.text), None)
        if correction is not None and correction.text != row.text:
            chosen, source, chosen_id = correction.text, "correction", None
        elif kept is not None and kept.id != row.id and kept.text != row.text:
            chosen, source, chosen_id = kept.text, "kept swipe", kept.id
        elif sibling is not None:
            chosen, source, chosen_id = sibling.text, "sibling", sibling.id
        else:
            continue
        info = {**meta(row), "chosen_from": source, "chosen_reply_id": chosen_id}
        record = {
            "prompt": json.loads(row.prompt_json),
            "chosen": assistant(chosen),
            "rejected": assistant(row.text),
            "meta": info,
        }
        yield Built(record, row.excluded is not None)


def _kto(group: Sequence[FeedbackRow], votes: VoteRule) -> Iterator[Built]:
    for row in group:
        if not votes.counted(row):
            continue
        record = {
            "prompt": json.loads(row.prompt_json),
            "completion": assistant(row.text),
            "label": votes.good(row),
            "meta": meta(row),
        }
        yield Built(record, row.excluded is not None)


def _review(group: Sequence[FeedbackRow]) -> Iterator[Built]:
    for row in group:
        if not (row.up or row.down or row.corrections):
            continue  # a sibling here only because a swipe chose another
        record = {
            "id": row.id,
            "conversation_id": row.conversation_id,
            "platform": row.platform,
            "character": row.character,
            "lora_version": row.lora_version,
            "model": row.model,
            "created_at": row.created_at,
            "prompt": json.loads(row.prompt_json),
            "reply": row.text,
            "score": row.score,
            "up": row.up,
            "down": row.down,
            "corrections": [
                {"text": c.text, "author": c.author, "source": c.source, "accepted": c.accepted}
                for c in row.corrections
            ],
            # Filled in by the reviewer and read back by `charbot import-corrections`.
            "better": "",
            "accept": False,
            "exclude": "",
            # Other ways to ask the prompt's last question: the stored ones, to add to.
            "paraphrases": list(row.paraphrases),
        }
        yield Built(record, row.excluded is not None)
