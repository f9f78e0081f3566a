"""``charbot loras try|stop|compare|promote`` and the canary side of ``rollback``.

A canary lets a sticky share of people meet a candidate version while everyone else keeps
the current one (bot/canary.py); ``compare`` judges it from their 👍/👎 (bot/compare.py);
``promote`` makes the candidate current for everyone, ``rollback`` (while a canary runs)
and ``stop`` end it and keep the current. A running bot follows each within
``[training] poll_seconds``. Bad input is one line and exit code 2, before anything is
written.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bot.canary_admin import ENDINGS, finish, no_canary
from bot.canary_admin import judge as judge_canary
from bot.config import Config
from bot.errors import CharbotError
from bot.loras import BASE, check_base, find_version
from engine import base_identity, lora_version


def add_parsers(actions: Any, common: argparse.ArgumentParser) -> None:
    """Add try, stop, compare and promote to ``charbot loras``'s actions."""
    start = actions.add_parser(
        "try", parents=[common], help="let a sticky share of people meet a candidate version"
    )
    start.add_argument("name")
    start.add_argument("version", help="a version id or its number (v3)")
    start.add_argument(
        "--share", type=float, default=0.2, help="the share of people who meet it (0.2)"
    )
    start.add_argument("--force", action="store_true", help="even if its evaluation is worse")
    stop = actions.add_parser("stop", parents=[common], help="end the canary, keep the current")
    stop.add_argument("name")
    compare = actions.add_parser(
        "compare", parents=[common], help="judge the canary from people's 👍/👎 and swipes"
    )
    compare.add_argument("name")
    compare.add_argument("--json", action="store_true", help="one JSON object")
    promote = actions.add_parser(
        "promote", parents=[common], help="make the canary's candidate current for everyone"
    )
    promote.add_argument("name")


ACTIONS = ("try", "stop", "compare", "promote")


def _share(value: float) -> float:
    if not 0 < value < 1:
        raise CharbotError(
            f"--share {value:g}: a canary's share lies between 0 and 1 (exclusive), e.g. 0.2; "
            "to give the version to everyone use `charbot loras use`"
        )
    return value


def current_version(config: Config, name: str, choice: Any) -> tuple[str | None, str | None]:
    """(version, path) ``name`` speaks with for everyone: its choice, else as configured."""
    if choice is not None:
        return choice.version, choice.path
    for character in config.characters:
        if character.name == name and character.lora:
            return lora_version(character.lora), character.lora
    return None, None


async def canary_command(
    config: Config, args: argparse.Namespace, store: Any, name: str, gate: Any
) -> str:
    """Run ``try``/``stop``/``compare``/``promote``/``rollback``; the line to print (compare
    prints its own). ``gate(config, name, evaluation, args)`` is the offline gate of `use`."""
    from storage import canaries, lora_choices

    wait = f"a running bot follows within {config.training.poll_seconds:g} s"
    if args.action == "try":
        share = _share(args.share)
        version = find_version(config.training.loras_dir, name, args.version)
        check_base(version, base_identity(config.model))
        gate(config, name, version.metadata.get("evaluation"), args)
        choice = (await lora_choices.current_choices(store)).get(name.lower())
        baseline, _ = current_version(config, name, choice)
        if baseline == version.id:
            raise CharbotError(
                f"{name} already speaks with {version.id}; a canary needs another version"
            )
        await canaries.start_canary(
            store, name, version.id, str(version.path), share, baseline, "cli"
        )
        return (
            f"{name}: {share:.0%} of people now meet {version.id}, everyone else "
            f"{baseline or BASE}; {wait}; judge it with `charbot loras compare {name}`"
        )
    live = await canaries.live_canary(store, name)
    if live is None:
        raise no_canary(name)
    if args.action == "compare":
        comparison = await judge(config, store, live)
        print(
            json.dumps(comparison.as_json(), ensure_ascii=False)
            if args.json
            else _table(comparison)
        )
        return ""
    if args.action == "promote":
        await finish(store, name, "promote", "cli")
        return f"{name} now speaks with {live.version} for everyone; {wait}"
    await finish(store, name, args.action, "cli")
    return (
        f"{name}: the canary of {live.version} is {ENDINGS[args.action]}; everyone meets "
        f"{live.baseline or BASE}; {wait}"
    )


async def judge(config: Config, store: Any, live: Any, now: float | None = None) -> Any:
    """The comparison of the canary ``live`` by [loop]'s rule."""
    return await judge_canary(store, live, config.loop, now)


def _table(c: Any) -> str:
    def rate(t: Any) -> str:
        return f"{t.rate:.0%}" if t.rate is not None else "-"

    lines = [
        f"{c.character}: candidate {c.candidate} ({c.share:.0%} of people) against "
        f"{c.current or BASE}, {c.days:.1f} days",
        f"  {'':<10} {'ratings':>8} {'👍':>5} {'👎':>5} {'👍 rate':>8} {'people':>7} {'capped':>7}",
    ]
    for label, t in (("current", c.current_tally), ("candidate", c.candidate_tally)):
        lines.append(
            f"  {label:<10} {t.ratings:>8} {t.up:>5} {t.down:>5} {rate(t):>8} "
            f"{t.people:>7} {t.capped:>7}"
        )
    p = c.posterior
    lines.append(
        f"  P(candidate better) {p.p_better:.3f}, P(worse) {p.p_worse:.3f}, "
        f"expected loss of shipping it {p.expected_loss:.4f}"
    )
    if c.pairs.count:
        lines.append(
            f"  swipes between their takes: candidate kept {c.pairs.candidate_kept}, "
            f"current kept {c.pairs.current_kept}"
        )
    lines.append(f"  decision: {c.decision} ({c.reason})")
    return "\n".join(lines)
