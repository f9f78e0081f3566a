"""Export feedback as JSONL records that TRL trainers read as they are.

- ``sft``: ``{"messages": [...prompt, {"role": "assistant", "content": better}]}`` for each
  corrected reply (the newest correction) and each reply with a net 👍 and no correction.
- ``dpo``: ``{"prompt": [...], "chosen": [assistant], "rejected": [assistant]}`` for each net-👎
  reply that has a correction or a net-👍 sibling (a regenerated reply to the same message).
- ``kto``: ``{"prompt": [...], "completion": [assistant], "label": bool}`` for every voted
  reply, label = net score > 0.
- ``review``: one object per rated or corrected reply with everything a person needs to
  judge it, and an empty ``"better"`` field to fill in.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm import tqdm

from storage.feedback import RatedReply, rated_replies
from storage.store import Store

FORMATS = ("sft", "dpo", "kto", "review")


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def records(replies: list[RatedReply], fmt: str) -> Iterator[dict[str, Any]]:
    """The training records of one format, in the order the replies were made."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    liked_sibling: dict[int | None, RatedReply] = {}
    by_parent: dict[int | None, list[RatedReply]] = defaultdict(list)
    for reply in replies:
        by_parent[reply.reply_to_id].append(reply)
        if reply.score > 0 and reply.reply_to_id is not None:
            liked_sibling.setdefault(reply.reply_to_id, reply)
    for reply in replies:
        better = reply.corrections[-1] if reply.corrections else None
        if fmt == "sft":
            if better is not None:
                yield {"messages": [*reply.prompt, *_assistant(better)]}
            elif reply.score > 0:
                yield {"messages": [*reply.prompt, *_assistant(reply.text)]}
        elif fmt == "dpo" and reply.score < 0:
            sibling = liked_sibling.get(reply.reply_to_id)
            chosen = better if better is not None else (sibling.text if sibling else None)
            if chosen is not None and chosen != reply.text:
                yield {
                    "prompt": reply.prompt,
                    "chosen": _assistant(chosen),
                    "rejected": _assistant(reply.text),
                }
        elif fmt == "kto" and (reply.up or reply.down):
            yield {
                "prompt": reply.prompt,
                "completion": _assistant(reply.text),
                "label": reply.score > 0,
            }
        elif fmt == "review":
            yield {
                "id": reply.id,
                "character": reply.character,
                "adapter_version": reply.adapter_version,
                "model": reply.model,
                "prompt": reply.prompt,
                "reply": reply.text,
                "score": reply.score,
                "up": reply.up,
                "down": reply.down,
                "corrections": reply.corrections,
                "better": "",
            }


async def export(store: Store, fmt: str, out: TextIO, character: str | None = None) -> int:
    """Write ``fmt`` records as JSONL to ``out``; return how many were written."""
    replies = await rated_replies(store, character)
    written = 0
    progress = tqdm(total=len(replies), desc=f"export {fmt}", unit="reply", disable=None)
    with progress:
        for record in records(replies, fmt):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
            progress.update(1)
        progress.n = len(replies)
    return written
