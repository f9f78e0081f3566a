"""Scenes with three characters on the real default model: who answered, what they knew.

The shipped characters (config.toml: Mara, Bram, Pip), the real default model (backend
"local"), a real SQLite file per run. Each run plays one script in one group chat:

1. Mara is the chat's character and Bram has joined. The person plants a fact with Mara
   ("the vault code is 4417") before Pip joins;
2. Pip joins, then four turns: one naming Bram, one naming Pip and Mara, one asking Pip for
   the code, and one naming nobody.

Runs: each policy of ``[scenes] policy`` (natural, list, pooled, manual), and the baseline,
today's behaviour without scenes: nobody joins, so the first named character answers alone
and sees the whole chat.

Printed per run, over the turns that name characters: the share where exactly the
characters the policy names answered, in order (target 100%); over all replies, the share
with a name tag or another speaker's turn in them (target 0%); the share of Pip's replies
whose stored prompt holds the planted fact, and those that say it (target 0%: Pip was not
there); replies per turn; and the time from a person's message to the last reply of the
chain it started (p50, max).

    .venv/bin/python benchmarks/scenes.py [--max-tokens 48] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.characters import Character
from bot.config import SceneSettings, load_config
from bot.core import Core
from bot.messages import Inbound
from bot.reply import ReplyTarget
from bot.scenes import POLICIES
from engine import create_model
from storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
FACT, SECRET = "Mara, remember this: the vault code is 4417.", "4417"
# (text, the characters it names, in order)
TURNS = (
    ("Bram, how is the sea tonight?", ("Bram",)),
    ("Pip and Mara, what are you two up to?", ("Pip", "Mara")),
    ("Pip, what is the vault code?", ("Pip",)),
    ("Well, what does everyone think we should do next?", ()),
)
PEOPLE = ("Sam",)


class Target(ReplyTarget):
    """A platform that takes every send and edit at once."""

    edit_interval: ClassVar[float] = 1.0
    counter = 0

    async def send(self, text: str, *, character: Character) -> str:
        Target.counter += 1
        return f"r{Target.counter}"

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        return None


def message(n: int, text: str) -> Inbound:
    return Inbound(
        platform="bench",
        chat_id="group",
        message_id=f"sam-{n}",
        author_id="sam",
        author_name="Sam",
        text=text,
        private=False,
        addressed=True,
    )


def expected(policy: str | None, named: tuple[str, ...], present: tuple[str, ...]) -> list[str]:
    """Who should answer a turn that names ``named``: what the policy promises, and for the
    baseline (None, no scene) what the person asked for."""
    if policy == "list":
        return list(present)
    if policy == "pooled":
        return list(named[:1])
    return list(named)


def tagged(text: str, names: tuple[str, ...]) -> bool:
    """A name tag ("[Bram]", "Bram:") or another speaker's turn inside a reply."""
    pattern = "|".join(re.escape(n) for n in names)
    return bool(re.search(rf"\[(?:{pattern})\]|(?:^|\n)\s*(?:{pattern})\s*:", text))


@dataclasses.dataclass
class Figures:
    right: int = 0
    named_turns: int = 0
    replies: int = 0
    tags: int = 0
    pip_replies: int = 0
    pip_prompt_leaks: int = 0
    pip_said: int = 0
    per_turn: list[int] = dataclasses.field(default_factory=list)
    last_reply_s: list[float] = dataclasses.field(default_factory=list)


async def run(policy: str | None, max_tokens: int, turns: int) -> Figures:
    config = load_config(ROOT / "config.toml", backend="local")
    settings = dataclasses.replace(config.model, max_new_tokens=max_tokens)
    names = tuple(c.name for c in config.characters[:3])
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite:///{Path(tmp) / 'scenes.db'}")
        core = Core(
            store=store,
            model=create_model(settings, progress=False),
            characters=config.characters,
            settings=settings,
            default_character=names[0],
            scenes=SceneSettings(policy=policy or "natural", seed=7),
        )
        await core.start()
        try:
            return await _play(core, store, policy, names, turns)
        finally:
            await core.close()
            await store.close()


async def _play(
    core: Core, store: Store, policy: str | None, names: tuple[str, ...], turns: int
) -> Figures:
    figures = Figures()
    await core.set_character("bench", "group", names[0])
    if policy is not None:
        await core.join("bench", "group", names[1])
    await core.handle(message(0, FACT), Target())
    if policy is not None:
        await core.join("bench", "group", names[2])
    seen = {r.id for r in await store.list_messages()}
    for n, (text, named) in enumerate(TURNS[:turns], start=1):
        started = time.perf_counter()
        await core.handle(message(n, text), Target())
        figures.last_reply_s.append(time.perf_counter() - started)
        rows = [r for r in await store.list_messages() if r.id not in seen]
        seen |= {r.id for r in rows}
        replies = [r for r in rows if r.role == "assistant"]
        figures.per_turn.append(len(replies))
        if named:
            want = expected(policy, named, names)
            figures.named_turns += 1
            figures.right += [r.character for r in replies[: len(want)]] == want
        for reply in replies:
            figures.replies += 1
            figures.tags += tagged(reply.text, (*names, *PEOPLE))
            if reply.character == names[2]:
                figures.pip_replies += 1
                figures.pip_prompt_leaks += SECRET in (reply.prompt_json or "")
                figures.pip_said += SECRET in reply.text
    return figures


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48, help="reply length cap")
    parser.add_argument("--quick", action="store_true", help="natural and baseline, 2 turns")
    args = parser.parse_args()
    runs: tuple[str | None, ...] = ("natural", None) if args.quick else (*POLICIES, None)
    turns = 2 if args.quick else len(TURNS)
    header = (
        f"{'run':<22}{'right speakers':>15}{'tags':>7}{'Pip prompt':>11}{'Pip said':>9}"
        f"{'replies/turn':>14}{'last reply p50':>16}{'max':>7}"
    )
    print(header)
    for policy in runs:
        f = asyncio.run(run(policy, args.max_tokens, turns))
        label = f"policy {policy}" if policy else "baseline: no scene"
        print(
            f"{label:<22}{share(f.right, f.named_turns):>15}{share(f.tags, f.replies):>7}"
            f"{share(f.pip_prompt_leaks, f.pip_replies):>11}{share(f.pip_said, f.pip_replies):>9}"
            f"{' '.join(map(str, f.per_turn)):>14}"
            f"{statistics.median(f.last_reply_s):>15.1f}s{max(f.last_reply_s):>6.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
