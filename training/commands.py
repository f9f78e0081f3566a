"""The data commands of the CLI: ``export``, ``import-corrections`` and ``data …``.

``charbot/cli.py`` (the composition root) adds these parsers and dispatches here; the work is in
:mod:`training.export`, :mod:`training.review_import` and :mod:`training.dataset`. Bad input
raises a :class:`~bot.errors.CharbotError` — one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bot.config import Config
from bot.errors import CharbotError

Command = Callable[[Config, argparse.Namespace], Awaitable[int]]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``export``, ``import-corrections`` and ``data`` to the CLI's subparsers."""
    _add_export(commands, common)
    _add_import_corrections(commands, common)
    _add_data(commands, common)


def _add_export(commands: Any, common: argparse.ArgumentParser) -> None:
    from storage.votes import THUMBS_DOWN
    from training.records import FORMATS

    export = commands.add_parser(
        "export", parents=[common], help="write feedback as JSONL training records"
    )
    export.add_argument("--format", choices=FORMATS, default="sft")
    export.add_argument("--character", help="only this character's replies")
    export.add_argument("--since", help="replies made on or after this date (YYYY-MM-DD[THH:MM])")
    export.add_argument("--until", help="replies made before this date (UTC)")
    export.add_argument("--platform", help="only replies on this platform (discord, telegram…)")
    export.add_argument(
        "--lora-version",
        "--adapter-version",  # its older name
        dest="lora_version",
        help='only replies of this LoRA version ("none": the bare base)',
    )
    export.add_argument("--min-votes", type=int, default=0, help="votes a reply needs to count")
    export.add_argument(
        "--thumbs-down",
        choices=THUMBS_DOWN,
        default="net",
        help="a reply is 👎 when its net score < 0 (net) or it has any 👎 (any)",
    )
    export.add_argument("--no-clean", action="store_true", help="skip the [clean] rules")
    export.add_argument("--out", type=Path, help="output file (default: standard output)")


def _add_import_corrections(commands: Any, common: argparse.ArgumentParser) -> None:
    review = commands.add_parser(
        "import-corrections", parents=[common], help="read a filled review file back"
    )
    review.add_argument("file", type=Path, help="a review file with `better` answers filled in")
    review.add_argument("--author", default="reviewer", help="who wrote them (stored as such)")
    review.add_argument(
        "--accept", action="store_true", help="mark them accepted: they win over newer ones"
    )
    review.add_argument("--skip-bad", action="store_true", help="skip bad lines, list them")


def _add_data(commands: Any, common: argparse.ArgumentParser) -> None:
    data = commands.add_parser(
        "data", parents=[common], help="a character's base dataset: import, clean, split, stats"
    )
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--character", required=True, help="whose dataset")
    where.add_argument("--dir", type=Path, help="datasets directory (default: data/datasets)")
    load = actions.add_parser(
        "import", parents=[common, where], help="CSV or JSONL file → train.jsonl"
    )
    load.add_argument("file", type=Path)
    load.add_argument("--encoding", default="utf-8", help="the file's encoding (e.g. cp949)")
    load.add_argument("--skip-bad", action="store_true", help="skip bad lines, list them")
    actions.add_parser("clean", parents=[common, where], help="apply the [clean] rules")
    split = actions.add_parser("split", parents=[common, where], help="split off validation")
    split.add_argument("--val", type=float, default=0.1, help="validation share (0.1)")
    split.add_argument("--seed", type=int, default=0)
    stats = actions.add_parser("stats", parents=[common, where], help="counts, lengths, words")
    stats.add_argument("--tokenizer", help="tokenizer directory (default: the base model's)")


def commands() -> dict[str, Command]:
    return {"export": _export, "import-corrections": _import_corrections, "data": _data}


# -- export --------------------------------------------------------------------------------


def _timestamp(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CharbotError(
            f"{flag} {value!r}: not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _cleaners(config: Config) -> dict[str, Any]:
    from training.cleaning import Cleaner

    cleaners = {"": Cleaner(config.clean)}
    for character in config.characters:
        cleaners[character.name.lower()] = Cleaner(config.clean_for(character.name))
    return cleaners


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        yield out


async def _export(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store
    from training.export import Selection, VoteRule, write_export

    if args.min_votes < 0:
        raise CharbotError(f"--min-votes {args.min_votes}: must be 0 or more")
    version = args.lora_version
    selection = Selection(
        character=args.character,
        since=_timestamp("--since", args.since),
        until=_timestamp("--until", args.until),
        platform=args.platform,
        lora_version="" if version is not None and version.lower() == "none" else version,
    )
    votes = VoteRule(thumbs_down=args.thumbs_down, min_votes=args.min_votes)
    cleaners = None if args.no_clean else _cleaners(config)
    async with open_store(config.storage) as store:
        with _output(args.out) as out:
            report = await store.read(
                lambda conn: write_export(
                    conn, args.format, out, selection, votes=votes, cleaners=cleaners
                )
            )
    if not report.kept:
        print(f"nothing to export: no {args.format} records match", file=sys.stderr)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(f"{report.kept} {args.format} records written", file=sys.stderr)
    return 0


async def _import_corrections(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store
    from training.review_import import import_review

    async with open_store(config.storage) as store:
        result = await store.write(
            lambda conn: import_review(
                conn, args.file, author=args.author, accept_all=args.accept, skip_bad=args.skip_bad
            )
        )
    print(
        f"{result.added} corrections added, {result.already} already stored, "
        f"{result.excluded} replies excluded, {result.empty} records left empty, "
        f"{result.paraphrases_added} paraphrases added "
        f"({result.paraphrases_already} already stored)",
        file=sys.stderr,
    )
    if result.missing:
        ids = ", ".join(str(i) for i in result.missing)
        print(f"{len(result.missing)} replies no longer exist: {ids}", file=sys.stderr)
    if result.bad:
        print(f"{len(result.bad)} bad lines skipped, listed in {result.rejects}", file=sys.stderr)
    return 0


# -- data ----------------------------------------------------------------------------------


def _dataset(config: Config, args: argparse.Namespace) -> Any:
    from training.dataset import DatasetFiles

    names = {c.name.lower(): c.name for c in config.characters}
    name = names.get(args.character.lower())
    if name is None:
        raise CharbotError(
            f"--character {args.character!r} is not configured; use one of "
            + ", ".join(c.name for c in config.characters)
        )
    root = args.dir
    if root is None:
        # [training] datasets_dir when the config has it (issue 10), else data/datasets.
        training = getattr(config, "training", None)
        root = (
            getattr(training, "datasets_dir", None)
            or config.path.resolve().parent / "data/datasets"
        )
    return DatasetFiles(Path(root), name)


async def _data(config: Config, args: argparse.Namespace) -> int:
    files = _dataset(config, args)
    if args.action == "import":
        from training.dataset.importer import import_file
        from training.dataset.readers import Source

        result = import_file(files, Source(args.file, args.encoding), skip_bad=args.skip_bad)
        print(
            f"{result.imported} records written to {files.train}"
            f" ({result.duplicates} duplicates dropped)",
            file=sys.stderr,
        )
        if result.bad:
            print(
                f"{len(result.bad)} bad lines skipped, listed in {result.rejects}", file=sys.stderr
            )
    elif args.action == "clean":
        from training.cleaning import Cleaner
        from training.dataset.clean import clean_dataset

        report = clean_dataset(files, Cleaner(config.clean_for(files.character)))
        for line in report.lines():
            print(line, file=sys.stderr)
    elif args.action == "split":
        from training.dataset.split import split_dataset

        train, val = split_dataset(files, val=args.val, seed=args.seed)
        print(f"{train} train, {val} validation records in {files.directory}", file=sys.stderr)
        if not train or not val:
            # Whole conversations go to one side: a few large ones can leave a side empty.
            print(
                f"note: the {'training' if not train else 'validation'} side is empty; "
                "try another --seed or --val, or add data",
                file=sys.stderr,
            )
    else:
        _stats(config, args, files)
    return 0


def _stats(config: Config, args: argparse.Namespace, files: Any) -> None:
    from training.cleaning import Cleaner
    from training.dataset.stats import collect, histogram, markdown

    tokenizer = _tokenizer(config, args.tokenizer)
    stats = collect(files, tokenizer, Cleaner(config.clean_for(files.character)))
    summary = markdown(files.character, stats)
    (files.directory / "stats.md").write_text(summary, encoding="utf-8")
    histogram(stats, files.directory / "stats.png", files.character)
    print(summary, end="")
    print(
        f"written: {files.directory / 'stats.md'}, {files.directory / 'stats.png'}", file=sys.stderr
    )


def _tokenizer(config: Config, path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path is not None:
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise CharbotError(
                f"--tokenizer {path}: cannot load a tokenizer there ({exc})"
            ) from None
    from engine import load_tokenizer

    return load_tokenizer(config.model)
