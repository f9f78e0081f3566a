"""LoRA versions on disk and which one each character speaks with, switched while running.

Versions live in ``loras_dir/<character>/vNNNN-<hash>/`` (written by training/versions.py:
into a hidden temporary directory, renamed when complete, so a half-written run is never
listed). The choice of version is persisted in the database (storage/lora_choices.py); a
running bot applies it at start and polls for changes every ``poll_seconds``.

Why poll the database rather than a control socket: the database already reaches every
process that serves a character (one bot per platform token is allowed, and they may run on
other hosts sharing PostgreSQL), it needs no port or socket file to secure or clean up, a
bot that was down when the switch was made picks it up at start by the same code path, and
one indexed query every two seconds costs nothing next to generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.canary_follow import CanaryFollower
from bot.errors import CharbotError
from engine import BaseIdentity, EngineError, lora_version
from storage import lora_choices
from storage.lora_choices import Choice

if TYPE_CHECKING:
    from bot.core import Core
    from storage.store import Store

log = logging.getLogger(__name__)

METADATA = "metadata.json"
BASE = "base"  # what users type for "no LoRA, the bare base model"
_VERSION_DIR = re.compile(r"^v(\d{4,})-([0-9a-f]{8,})$")


class LoraError(CharbotError):
    """A version that does not exist or does not fit; one line naming it and the fix."""


@dataclass(frozen=True, slots=True)
class LoraVersion:
    """One trained version of a character's LoRA, as found on disk."""

    character: str
    id: str  # "v0003-1a2b3c4d": the number and a hash of the weights
    number: int
    path: Path
    metadata: dict[str, Any] = field(compare=False, hash=False)

    @property
    def created(self) -> str:
        return str(self.metadata.get("created", ""))

    @property
    def parent(self) -> str | None:
        return self.metadata.get("parent")


def character_dir(loras_dir: Path, character: str) -> Path:
    """``loras_dir/<character>``, the name made safe for a file system."""
    return loras_dir / re.sub(r"[^\w.-]", "_", character)


def list_versions(loras_dir: Path, character: str) -> list[LoraVersion]:
    """The complete versions of ``character``, oldest first (temporary dirs are skipped)."""
    root = character_dir(loras_dir, character)
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        match = _VERSION_DIR.match(entry.name)
        meta_file = entry / METADATA
        if not match or not meta_file.is_file():
            continue
        try:
            metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping %s: unreadable %s", entry, METADATA)
            continue
        found.append(LoraVersion(character, entry.name, int(match[1]), entry, metadata))
    return sorted(found, key=lambda v: v.number)


def find_version(loras_dir: Path, character: str, wanted: str) -> LoraVersion:
    """The version ``wanted`` names: its id, ``v3``/``v0003``/``3``, or an id prefix."""
    versions = list_versions(loras_dir, character)
    text = wanted.strip().lower()
    number = re.fullmatch(r"v?(\d+)", text)
    for version in versions:
        if version.id == text or (number and version.number == int(number[1])):
            return version
    prefixed = [v for v in versions if v.id.startswith(text)]
    if len(prefixed) == 1:
        return prefixed[0]
    known = ", ".join(v.id for v in versions) or "none yet; train one with `charbot train`"
    raise LoraError(f"{character} has no LoRA version {wanted!r}; versions: {known}")


# -- the base model a version was trained on ------------------------------------------------


def check_base(version: LoraVersion, base: BaseIdentity) -> None:
    """Refuse a version trained on another base model (one line, before anything loads)."""
    trained = version.metadata.get("base_model", {})
    theirs, ours = trained.get("fingerprint"), base.fingerprint
    if (theirs and ours and theirs != ours) or (
        not (theirs and ours) and trained.get("name") not in (None, base.name)
    ):
        raise LoraError(
            f"{version.character} {version.id} was trained on another base model "
            f"({trained.get('name')!r}, {str(theirs)[:12]}) than the configured "
            f"{base.name!r} ({str(ours)[:12]}); train a new version on this base"
        )


# -- the running bot -------------------------------------------------------------------------


class LoraSwitcher:
    """Applies the persisted LoRA choices to a running core, and makes new ones.

    At start every character gets its chosen version; afterwards the database is polled so
    that a choice made in another process (``charbot adapters use``) reaches this one within
    ``poll_seconds``. Replies already generating finish on the version they started with.
    """

    def __init__(
        self,
        core: Core,
        store: Store,
        loras_dir: Path,
        base: BaseIdentity,
        *,
        poll_seconds: float = 2.0,
    ) -> None:
        self.core = core
        self.store = store
        self.loras_dir = loras_dir
        self.base = base
        self.poll_seconds = poll_seconds
        # What config.toml gave each character: where a rollback past every choice returns.
        self._configured = {c.name.lower(): c.lora for c in core.characters}
        self._applied: dict[str, int | None] = {}  # lower name -> applied choice id
        self._task: asyncio.Task[None] | None = None
        self.canaries = CanaryFollower(core, store)  # the same poll follows the canaries

    async def start(self) -> None:
        await self.apply()
        if self.poll_seconds > 0:
            self._task = asyncio.create_task(self._poll(), name="lora-switcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.apply()
            except Exception:  # a locked or unreachable database: try again next time
                log.warning("could not read the LoRA choices; retrying", exc_info=True)

    async def apply(self) -> None:
        """Switch every character whose persisted choice differs from what it runs."""
        choices = await lora_choices.current_choices(self.store)
        for character in self.core.characters:
            key = character.name.lower()
            choice = choices.get(key)
            choice_id = choice.id if choice is not None else None
            if self._applied.get(key, None) == choice_id and key in self._applied:
                continue
            self._applied[key] = choice_id  # also on failure: do not retry a broken choice
            path = choice.path if choice is not None else self._configured.get(key)
            if choice is None and character.lora == path:
                continue  # nothing chosen, still as configured
            try:
                await self.core.switch_lora(character.name, path)
            except (CharbotError, EngineError) as exc:
                log.error("could not switch %s's LoRA: %s", character.name, exc)
                continue
            log.info("%s now speaks with %s", character.name, choice.version if choice else path)
        await self.canaries.apply()

    def versions(self, character: str) -> list[LoraVersion]:
        return list_versions(self.loras_dir, self.core.character(character).name)

    def current(self, character: str) -> str | None:
        """The version ``character`` speaks with now (None: the bare base model)."""
        path = self.core.character(character).lora
        return lora_version(path) if path else None

    async def use(self, character: str, wanted: str, chosen_by: str) -> str | None:
        """Make ``character`` speak with version ``wanted`` (``base``: none); persist it."""
        name = self.core.character(character).name
        version, path = await asyncio.to_thread(resolve_choice, self, name, wanted)
        await self.core.switch_lora(name, path)  # a bad LoRA raises; nothing persisted
        choice = await lora_choices.record_choice(self.store, name, version, path, chosen_by)
        self._applied[name.lower()] = choice.id
        return version

    async def rollback(self, character: str) -> str | None:
        """Go back to the choice before the current one; return the version now used."""
        name = self.core.character(character).name
        await lora_choices.roll_back(self.store, name)
        self._applied.pop(name.lower(), None)
        await self.apply()
        return self.current(name)


def resolve_choice(where: LoraSwitcher | Any, character: str, wanted: str) -> tuple[Any, Any]:
    """(version id, path) for ``wanted``, checked against the base model; (None, None) for
    ``base``. ``where`` has ``loras_dir`` and ``base``."""
    if wanted.strip().lower() in (BASE, "none"):
        return None, None
    version = find_version(where.loras_dir, character, wanted)
    check_base(version, where.base)
    return version.id, str(version.path)


def describe(choice: Choice | None) -> str:
    if choice is None:
        return "as configured"
    return choice.version or BASE
