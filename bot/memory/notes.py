"""What a character knows about each person: short notes per (character, person).

A note comes from ``/remember TEXT``, from the studio, or from what the person says (see
bot.memory.extract). It enters the prompt whenever that person speaks with that character,
in any chat — except that a note made in a private chat (a DM) stays in that chat, unless
its author made it public (``/remember --public``). So what someone tells a character in
private never reaches a group or anyone else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.config import MemorySettings
from bot.errors import CharbotError
from storage import memory as sql
from storage.records import StoredNote
from storage.store import Store

SHARED, PRIVATE = "shared", "private"


class NoteError(CharbotError):
    """A note that cannot be taken or found; the message is the one-line answer."""


@dataclass(frozen=True, slots=True)
class Person:
    """Who is speaking, and where: the key of their notes and of what may be shown there.
    ``private`` is None when not known (treated as private)."""

    platform: str
    user_id: str
    name: str
    chat_id: str
    private: bool | None = None


def shown_in(note: StoredNote, chat_id: str) -> bool:
    """Whether ``note`` may enter a prompt or a list in chat ``chat_id``."""
    return note.scope == SHARED or note.chat_id == chat_id


class Notes:
    """Takes, lists, forgets and selects notes about people."""

    def __init__(self, store: Store, settings: MemorySettings) -> None:
        self.store = store
        self.settings = settings

    async def remember(
        self,
        character: str,
        person: Person,
        text: str,
        *,
        public: bool = False,
        source: str = "user",
        message_id: int | None = None,
    ) -> StoredNote:
        """Store a note about ``person``; raises NoteError when it is empty or too long.
        The same note twice is stored once (the earlier one is returned)."""
        text = " ".join(text.split())
        if not text:
            raise NoteError("Nothing to remember: write /remember and what I should know.")
        limit = self.settings.note_chars
        if len(text) > limit:
            raise NoteError(
                f"That note is {len(text)} characters; a note holds at most {limit}. "
                "Say it shorter, or as two notes."
            )
        scope = SHARED if public or person.private is False else PRIVATE
        note = StoredNote(
            0,
            character,
            person.platform,
            person.user_id,
            text,
            scope,
            person.chat_id,
            source,
            message_id,
            time.time(),
        )

        def work(conn):  # type: ignore[no-untyped-def]
            # Two processes noting the same thing at once: the second waits, then finds it.
            sql.lock_person_notes(conn, character, person.platform, person.user_id)
            mine = sql.person_notes(conn, character, person.platform, person.user_id)
            for old in mine:
                if old.text.casefold() == text.casefold() and old.scope == scope:
                    return old
            note_id = sql.add_note(conn, note)
            extra = len(mine) + 1 - self.settings.max_notes
            if extra > 0:  # the oldest go first
                sql.delete_notes(conn, [old.id for old in mine[:extra]])
            return dataclasses.replace(note, id=note_id)

        return await self.store.write(work)

    async def visible(self, character: str, person: Person) -> list[StoredNote]:
        """The person's notes with ``character`` that may be shown in their chat, oldest
        first: the numbers of /memory and /forget N."""
        notes = await self.store.read(
            lambda conn: sql.person_notes(conn, character, person.platform, person.user_id)
        )
        return [note for note in notes if shown_in(note, person.chat_id)]

    async def forget(self, character: str, person: Person, which: str) -> list[StoredNote]:
        """Remove note number ``which`` of :meth:`visible`, or every visible one ("all");
        the notes removed. Raises NoteError for a number that is not listed."""
        notes = await self.visible(character, person)
        if which.strip().lower() == "all":
            chosen = notes
        else:
            try:
                number = int(which.strip().lstrip("#"))
            except ValueError:
                raise NoteError("Write /forget N (a number from /memory) or /forget all.") from None
            if not 1 <= number <= len(notes):
                listed = f"1–{len(notes)}" if notes else "none yet"
                raise NoteError(f"There is no note {number}; /memory lists them ({listed}).")
            chosen = [notes[number - 1]]
        if chosen:
            await self.store.write(lambda conn: sql.delete_notes(conn, [n.id for n in chosen]))
        return chosen

    async def for_prompt(
        self,
        character: str,
        platform: str,
        chat_id: str,
        speakers: Sequence[tuple[str, str]],
        count_tokens: Callable[[str], int],
    ) -> list[tuple[str, list[str]]]:
        """(name, notes) for each speaker (user id, name), the newest speaker first, with
        the notes that may enter chat ``chat_id``, newest kept within ``[memory]
        notes_tokens``."""
        budget = self.settings.notes_tokens
        if not speakers or budget <= 0:
            return []

        def read(conn):  # type: ignore[no-untyped-def]
            return [sql.person_notes(conn, character, platform, uid) for uid, _ in speakers]

        found = await self.store.read(read)
        about: list[tuple[str, list[str]]] = []
        for (_uid, name), notes in zip(speakers, found, strict=True):
            chosen: list[str] = []
            for note in reversed([n for n in notes if shown_in(n, chat_id)]):
                cost = count_tokens(note.text) + 2
                if cost > budget:
                    break
                chosen.insert(0, note.text)
                budget -= cost
            if chosen:
                about.append((name, chosen))
        return about
