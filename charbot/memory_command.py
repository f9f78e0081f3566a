"""``charbot memory show|forget|rebuild`` and ``charbot forget-user``: what memory holds, read
and changed from the terminal (docs/memory.md#managing-memory).

charbot/cli.py registers them with :func:`add_parsers` and dispatches through
:func:`commands`. The SQL is storage.memory's; a running bot sees the changes through the
database (summaries and notes are read per reply, recall re-reads a chat whose vector count
changed). Bad input raises a :class:`~bot.errors.CharbotError`: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.config import Config
from bot.errors import CharbotError
from storage import memory as sql
from storage.records import ChatSummary, StoredNote

Command = Callable[[Config, argparse.Namespace], Awaitable[int]]
WIDTH = 88  # of the wrapped texts


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``memory`` (show, forget, rebuild) and ``forget-user`` to the CLI's subparsers."""
    memory = commands.add_parser(
        "memory", parents=[common], help="memory: list summaries and notes, forget notes, reindex"
    )
    actions = memory.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", parents=[common], help="conversations' summaries and notes about people"
    )
    show.add_argument("--character", help="only notes of this character, summaries it replied in")
    show.add_argument(
        "--user", metavar="PLATFORM:USER_ID", help="only this person's notes and conversations"
    )
    show.add_argument("--chat", metavar="PLATFORM:CHAT_ID", help="only this chat's")
    forget = actions.add_parser("forget", parents=[common], help="delete notes by id")
    forget.add_argument("note_ids", nargs="+", metavar="NOTE_ID", help="as `memory show` lists")
    rebuild = actions.add_parser(
        "rebuild", parents=[common], help="drop the message vectors and embed again"
    )
    rebuild.add_argument("--chat", metavar="PLATFORM:CHAT_ID", help="only this chat's vectors")
    person = commands.add_parser(
        "forget-user",
        parents=[common],
        help="remove a person's notes, vectors and summaries; never embed their messages again",
    )
    person.add_argument("platform", help="discord, telegram, web…")
    person.add_argument("user_id", help="their user id on that platform")


def commands() -> dict[str, Command]:
    return {"memory": _memory, "forget-user": _forget_user}


def _where(flag: str, value: str | None) -> tuple[str, str] | None:
    """``PLATFORM:ID`` split, or None when the flag is not given."""
    if value is None:
        return None
    platform, _, ident = value.partition(":")
    if not platform.strip() or not ident.strip():
        raise CharbotError(f"{flag} {value!r}: write PLATFORM:ID, e.g. telegram:123456")
    return platform.strip(), ident.strip()


async def _memory(config: Config, args: argparse.Namespace) -> int:
    action = {"show": _show, "forget": _forget, "rebuild": _rebuild}[args.action]
    return await action(config, args)


# -- show ----------------------------------------------------------------------------------


async def _show(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store

    user = _where("--user", args.user)
    chat = _where("--chat", args.chat)
    if user and chat and user[0] != chat[0]:
        raise CharbotError(f"--user {args.user} and --chat {args.chat} are on other platforms")
    platform = (user or chat or (None, None))[0]

    def read(conn: Any) -> tuple[list[ChatSummary], list[StoredNote]]:
        summaries = sql.current_summaries(
            conn,
            platform=platform,
            chat_id=chat[1] if chat else None,
            character=args.character,
            author_id=user[1] if user else None,
        )
        notes = sql.person_notes(conn, None, *user) if user else sql.list_notes(conn)
        if args.character:
            notes = [n for n in notes if n.character.lower() == args.character.lower()]
        if chat:
            notes = [n for n in notes if (n.platform, n.chat_id) == chat]
        return summaries, notes

    async with open_store(config.storage) as store:
        summaries, notes = await store.read(read)
    for line in listing(summaries, notes):
        print(line)
    return 0


def listing(summaries: list[ChatSummary], notes: list[StoredNote]) -> list[str]:
    """The plain-text listing of ``memory show``."""
    lines = [f"summaries ({len(summaries)})" if summaries else "summaries: none"]
    for found in summaries:
        s = found.summary
        thread = f" thread {found.thread_id}" if found.thread_id else ""
        lines.append(
            f"  conversation {s.conversation_id}  {found.platform}:{found.chat_id}{thread}  "
            f"messages {s.first_message_id}–{s.last_message_id}"
        )
        lines.extend(_wrapped(s.text))
    lines.append("")
    lines.append(f"notes ({len(notes)})" if notes else "notes: none")
    for note in notes:
        where = f" in {note.platform}:{note.chat_id}" if note.scope == "private" else ""
        lines.append(
            f"  #{note.id}  {note.character}  {note.platform}:{note.user_id}  "
            f"{note.scope}{where}  {note.source}"
        )
        lines.extend(_wrapped(note.text))
    return lines


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(
        " ".join(text.split()) or "(empty)", WIDTH, initial_indent="    ", subsequent_indent="    "
    )


# -- forget --------------------------------------------------------------------------------


async def _forget(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store

    ids: list[int] = []
    for given in args.note_ids:
        try:
            ids.append(int(given.lstrip("#")))
        except ValueError:
            raise CharbotError(
                f"{given!r} is not a note id; `charbot memory show` lists them (#12)"
            ) from None

    def work(conn: Any) -> list[StoredNote]:
        found = sql.notes_by_id(conn, ids)
        sql.delete_notes(conn, [note.id for note in found])
        return found

    async with open_store(config.storage) as store:
        removed = await store.write(work)
    unknown = [i for i in dict.fromkeys(ids) if i not in {note.id for note in removed}]
    named = ", ".join(f"#{i}" for i in unknown)
    if not removed:
        raise CharbotError(f"no note {named}; `charbot memory show` lists them")
    for note in removed:
        print(
            f"removed note #{note.id} ({note.character}, {note.platform}:{note.user_id}): "
            f"{note.text}"
        )
    if unknown:
        print(f"no note {named} (nothing removed for those)", file=sys.stderr)
    return 0


# -- rebuild -------------------------------------------------------------------------------


async def _rebuild(config: Config, args: argparse.Namespace) -> int:
    from bot.knowledge import MiniLM
    from bot.memory.recall import Indexer
    from storage.store import open_store

    chat = _where("--chat", args.chat)
    async with open_store(config.storage) as store:
        dropped = await store.write(lambda conn: sql.drop_vectors(conn, *(chat or ())))
        indexer = Indexer(store, MiniLM(), progress=True, bar_at=0)
        embedded = await indexer.catch_up()
    where = f" of {chat[0]}:{chat[1]}" if chat else ""
    print(f"dropped {dropped} message vectors{where}; embedded {embedded} messages ({MiniLM.name})")
    return 0


# -- forget-user ---------------------------------------------------------------------------


async def _forget_user(config: Config, args: argparse.Namespace) -> int:
    from storage.store import open_store

    platform, user_id = args.platform.strip(), args.user_id.strip()
    if not platform or not user_id:
        raise CharbotError("forget-user: give the platform and the user id, e.g. telegram 123456")
    async with open_store(config.storage) as store:
        done = await store.write(
            lambda conn: sql.forget_person(conn, platform, user_id, time.time())
        )
    print(
        f"forgot {platform}:{user_id}: {done.notes} notes, {done.vectors} message vectors and "
        f"{done.summaries} summaries of {done.conversations} conversations removed (the bot "
        "summarises those conversations again without this person); their messages stay in "
        "the history and the training data"
    )
    return 0
