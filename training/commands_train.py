"""``charbot train``, ``charbot eval``, ``charbot loras list|use|rollback`` and
``charbot stats --by-version``: the CLI side of versioned LoRAs.

charbot/cli.py registers these with :func:`add_commands` and runs them through :data:`COMMANDS`;
everything else lives here. Bad input is one line and exit code 2 (a CharbotError), checked
before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.errors import CharbotError
from bot.loras import (
    BASE,
    LoraError,
    check_base,
    find_version,
    list_versions,
)
from engine import base_identity, lora_version
from training import commands_canary
from training.train_data import METHODS


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add train, eval and loras (and its older name, adapters) to the sub-command parser."""
    train = commands.add_parser(
        "train", parents=[common], help="fine-tune a character's next LoRA version"
    )
    train.add_argument("--character", required=True, help="whose LoRA to train")
    train.add_argument(
        "--data",
        nargs="+",
        type=Path,
        help="JSONL files to train on (default: the character's dataset and new feedback)",
    )
    train.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME=FILE[,FILE][:EPOCHS]",
        help="a curriculum stage, trained in the order given (repeat the option)",
    )
    train.add_argument("--method", choices=METHODS, help="default: [training] method")
    train.add_argument("--epochs", type=int, help="override [training] epochs")
    train.add_argument("--resume", action="store_true", help="continue the last unfinished run")
    train.add_argument("--eval", action="store_true", help="evaluate the new version at the end")
    train.add_argument(
        "--use",
        action="store_true",
        help="evaluate it and switch the character to it, unless it is worse (the gate)",
    )
    train.add_argument("--force", action="store_true", help="with --use: switch even if worse")
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser(
        "eval", parents=[common], help="score a LoRA version against held-out references"
    )
    evaluate.add_argument("--character", required=True)
    evaluate.add_argument("--version", help="default: the version in use (or the newest)")
    evaluate.add_argument("--against", help="another version to compare with (or 'base')")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")

    for command in ("loras", OLD_LORAS_COMMAND):
        _add_loras(commands, common, command)


OLD_LORAS_COMMAND = "adapters"  # the older name of ``loras``, still accepted


def _add_loras(commands: Any, common: argparse.ArgumentParser, command: str) -> None:
    about = "list, use or roll back LoRA versions"
    loras = commands.add_parser(
        command,
        parents=[common],
        # argparse has no hidden sub-commands: the old name's help points to the new one.
        help=about if command == "loras" else "the older name of loras",
    )
    actions = loras.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="versions per character")
    listing.add_argument("name", nargs="?", help="one character (default: all)")
    use = actions.add_parser("use", parents=[common], help="switch a character to a version")
    use.add_argument("name")
    use.add_argument("version", help=f"a version id, its number (v3), or '{BASE}'")
    use.add_argument("--force", action="store_true", help="switch even if its evaluation is worse")
    rollback = actions.add_parser(
        "rollback",
        parents=[common],
        help="end a running canary, else go back to the previous choice",
    )
    rollback.add_argument("name")
    commands_canary.add_parsers(actions, common)  # try, stop, compare, promote


# -- LoRAs ----------------------------------------------------------------------------------


async def loras_command(config: Config, args: argparse.Namespace) -> int:
    """``charbot loras list|use|rollback``: the versions, and the persisted choice."""
    if args.command == OLD_LORAS_COMMAND:
        print(
            f"charbot: `charbot {OLD_LORAS_COMMAND}` is now `charbot loras` "
            f"(`charbot loras {args.action}`)",
            file=sys.stderr,
        )
    from storage import canaries, lora_choices
    from storage.store import open_store

    names = [c.name for c in config.characters]
    wanted = getattr(args, "name", None)
    if wanted is not None:
        names = [_character(config, wanted)]
    loras_dir = config.training.loras_dir
    async with open_store(config.storage) as store:
        if args.action == "list":
            choices = await lora_choices.current_choices(store)
            for name in names:
                print(_version_table(config, name, choices.get(name.lower())))
            return 0
        name = names[0]
        if args.action in commands_canary.ACTIONS or (
            args.action == "rollback" and await canaries.live_canary(store, name) is not None
        ):
            line = await commands_canary.canary_command(config, args, store, name, gate)
            if line:
                print(line)
            return 0
        if args.action == "use":
            if args.version.strip().lower() in (BASE, "none"):
                version_id, path = None, None
            else:
                version = find_version(loras_dir, name, args.version)
                check_base(version, base_identity(config.model))
                gate(config, name, version.metadata.get("evaluation"), args)
                version_id, path = version.id, str(version.path)
            await lora_choices.record_choice(store, name, version_id, path, "cli")
            now = version_id or "the bare base model"
        else:
            choice = await lora_choices.roll_back(store, name)
            if choice is not None:
                now = choice.version or "the bare base model"
            else:
                now = f"its configured LoRA ({_configured_lora(config, name)})"
    print(
        f"{name} now speaks with {now}; a running bot switches within "
        f"{config.training.poll_seconds:g} s"
    )
    return 0


class Refused(CharbotError):
    """The gate refused a version: worse than the one in use (one line, with the override)."""


def gate(config: Config, name: str, evaluation: Any, args: argparse.Namespace) -> None:
    from training.gate import refusal

    if getattr(args, "force", False):
        return
    if not evaluation or not evaluation.get("baseline"):
        print(
            f"charbot: note: {args.version} has no evaluation against another version; "
            f"`charbot eval --character {name} --version {args.version} --against base` "
            "shows how it does",
            file=sys.stderr,
        )
        return
    failed = refusal(evaluation, config.training_for(name))
    if failed is not None:
        raise Refused(failed)


def _configured_lora(config: Config, name: str) -> str | None:
    for character in config.characters:
        if character.name == name:
            return lora_version(character.lora) if character.lora else BASE
    return None


def _character(config: Config, name: str) -> str:
    for character in config.characters:
        if character.name.lower() == name.strip().lower():
            return character.name
    from bot.errors import UnknownCharacter

    raise UnknownCharacter(name, [c.name for c in config.characters])


def _version_table(config: Config, name: str, choice: Any) -> str:
    versions = list_versions(config.training.loras_dir, name)
    current = choice.version if choice is not None else _configured_lora(config, name)
    lines = [f"{name} (in use: {current or BASE})"]
    if not versions:
        lines.append(f"  no versions yet; train one with `charbot train --character {name}`")
    for v in versions:
        meta = v.metadata
        loss = meta.get("validation", {}).get("best_loss")
        summary = meta.get("evaluation") or {}
        lines.append(
            f"  {'▶' if v.id == current else ' '} {v.id}  {v.created[:19]}  "
            f"parent {v.parent or '-'}  {meta.get('method', '?')}  "
            f"examples {meta.get('examples', '?')}  val loss {_num(loss)}  " + _figures(summary)
        )
    return "\n".join(lines)


def _figures(summary: dict[str, Any]) -> str:
    """An evaluation in one line: the figures users feel, then the gate's decision."""
    if not summary:
        return "not evaluated"
    parts = [
        f"paraphrased {_pct(summary.get('paraphrase_recall'))}",
        f"leak {_pct(summary.get('leak_rate'))}",
        f"distinct {_pct(summary.get('distinct_rate'))}",
        f"persona {_pct(summary.get('persona_score'))}",
        f"held-out sim {_num(summary.get('heldout_similarity'))}",
    ]
    gate = summary.get("gate") or {}
    if gate.get("passed") is False:
        parts.append("gate: refused")
    return "  ".join(parts)


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "-"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


# -- stats --by-version ----------------------------------------------------------------------


async def stats_by_version_command(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store
    from storage.version_stats import stats_by_version

    async with open_store(config.storage) as store:
        rows = await stats_by_version(store)
    headers = ("character", "version", "replies", "👍 rate", "👎 rate", "corrections")
    print(f"{headers[0]:<12} {headers[1]:<16} " + " ".join(f"{h:>11}" for h in headers[2:]))
    for row in rows:
        up = f"{row.up_rate:.0%}" if row.up_rate is not None else "-"
        down = f"{row.down_rate:.0%}" if row.down_rate is not None else "-"
        print(
            f"{row.character:<12} {row.version or BASE:<16} {row.replies:>11} {up:>11} "
            f"{down:>11} {row.corrections:>11}"
        )
    return 0


# -- train -----------------------------------------------------------------------------------


async def train_command(config: Config, args: argparse.Namespace) -> int:
    from training.train import TrainingInterrupted
    from training.train_plan import build_plan, run_training

    name = _character(config, args.character)
    if args.device != "cpu":
        _check_device(args.device)
    plan, since_note = await build_plan(config, name, args)
    try:
        version = await run_training(config, plan, args)
    except TrainingInterrupted as exc:  # Ctrl-C: a checkpoint was saved; not an input error
        print(f"charbot: {exc}", file=sys.stderr)
        return 130
    print(f"{name}: trained {version.id} ({since_note}) in {version.path}")
    evaluation = version.metadata.get("evaluation")
    if evaluation:
        print(f"{name} {version.id}: {_figures(evaluation)}")
        baseline = evaluation.get("baseline")
        if baseline:
            print(f"{name} {evaluation.get('against')} (in use): {_figures(baseline)}")
    if args.use and not args.force:
        from training.gate import refusal

        failed = refusal(evaluation, config.training_for(name))
        if failed is not None:
            print(
                f"charbot: not switched: {failed.replace('the new version', version.id)}",
                file=sys.stderr,
            )
            return 1
    if args.use:
        from storage import lora_choices
        from storage.store import open_store

        async with open_store(config.storage) as store:
            await lora_choices.record_choice(store, name, version.id, str(version.path), "train")
        print(f"{name} now speaks with {version.id}")
    else:
        print(f"switch to it with: charbot loras use {name} {version.id}")
    return 0


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CharbotError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if not device.startswith("cuda"):
        raise CharbotError(f"--device {device}: use cpu or cuda")


# -- eval ------------------------------------------------------------------------------------


async def eval_command(config: Config, args: argparse.Namespace) -> int:
    from training.eval_run import run_eval

    name = _character(config, args.character)
    started = time.perf_counter()
    report, evals = await run_eval(config, name, args.version, args.against, not args.quiet)
    for e in evals:
        s = e.summary()
        print(
            f"{name} {e.label}: paraphrased {_pct(s['paraphrase_recall'])} of "
            f"{s['paraphrase_questions']}, leak {_pct(s['leak_rate'])} and distinct "
            f"{_pct(s['distinct_rate'])} of {s['unrelated_prompts']} unrelated, persona "
            f"{_pct(s['persona_score'])} of {s['persona_questions']}, held-out similarity "
            f"{_num(s['heldout_similarity'])} ({s['heldout_questions']}), corrected "
            f"{_num(s['corrected_similarity'])} ({s['corrected_questions']})"
        )
    print(f"report: {report} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


COMMANDS = {
    "train": train_command,
    "eval": eval_command,
    "loras": loras_command,
    OLD_LORAS_COMMAND: loras_command,
}

__all__ = ["COMMANDS", "LoraError", "add_commands", "stats_by_version_command"]
