"""The records that cross the store's edge: what it hands back and what it is asked to write.

Small frozen dataclasses, so that no SQLAlchemy row leaves storage/ and a caller reads named,
typed fields. Two kinds of message id are kept apart by name: a *row id* (``id``,
``parent_id``, ``message_id``) is an ``int`` of this database; a platform's own id is a
string and is always called ``platform_…`` (``platform_message_id``,
``reply_to_platform_id``). ``parent_id`` is the ``messages.reply_to_id`` column: the message
this one follows in the conversation tree (see docs/glossary.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of ``messages``: a person's message or a character's reply, with everything
    needed to reproduce a reply. Fields are the columns, except ``parent_id``."""

    id: int
    conversation_id: int
    platform: str
    chat_id: str
    platform_message_id: str | None  # a reply's first part
    role: str  # "user" | "assistant"
    author_id: str
    author_name: str
    text: str
    parent_id: int | None  # column reply_to_id
    regenerated_from_id: int | None
    character: str | None
    lora_version: str | None
    model: str | None
    prompt_json: str | None
    sampling_json: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    status: str
    error: str | None
    created_at: float
    progress: str | None
    wanted_character: str | None
    default_character: str | None


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """One message as a reply's history needs it. Stored messages never change, so these
    can be cached."""

    id: int
    role: str
    text: str
    character: str | None
    author_name: str
    author_id: str = ""  # whose notes the character recalls when this person speaks


@dataclass(frozen=True, slots=True)
class StoredVote:
    """One person's 👍 (+1) or 👎 (-1) on one reply (a row of ``ratings``)."""

    id: int
    message_id: int
    user_id: str
    value: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredCorrection:
    """A better reply written for a stored reply (a row of ``corrections``)."""

    id: int
    message_id: int
    user_id: str
    text: str
    created_at: float
    source: str  # "user" | "reviewer" | "import"
    accepted: bool


@dataclass(frozen=True, slots=True)
class NewInbound:
    """A person's message to store, as :meth:`Store.store_inbound` writes it.

    ``wants_answer``: it is stored ``pending`` until a reply marks it answered; the two
    characters are what will pick who answers it (kept with it for a restart).
    """

    platform: str
    chat_id: str
    thread_id: str | None
    platform_message_id: str | None
    author_id: str
    author_name: str
    text: str
    reply_to_platform_id: str | None  # the platform message it replies to, if any
    created_at: float
    wants_answer: bool = False
    wanted_character: str | None = None
    default_character: str | None = None


@dataclass(frozen=True, slots=True)
class StoredInbound:
    """What storing an inbound message found out on the way."""

    conversation_id: int
    message_id: int
    parent_id: int | None  # the message it follows, when ``linked``
    linked: bool  # False: :meth:`Store.settle` must link it once its place in line comes
    replied: StoredMessage | None  # the stored message it explicitly replies to
    chat_character: str | None  # the chat's current character, read in the same transaction
    duplicate: bool = False  # already stored (a redelivered event): nothing was written


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where a character's reply goes — its conversation, chat and the message it answers
    (``parent_id``) — and who writes it. Known before the first token."""

    conversation_id: int
    platform: str
    chat_id: str
    parent_id: int
    character: str


@dataclass(frozen=True, slots=True)
class NewReply:
    """A character's reply (or an error row) to store, with what reproduces it: the exact
    prompt, sampling, model, LoRA version, latency and token counts."""

    address: ReplyAddress
    text: str
    platform_message_ids: Sequence[str] = ()  # every platform message showing it, in order
    prompt: Sequence[dict[str, str]] | None = None
    sampling: dict[str, Any] | None = None
    model: str | None = None
    lora_version: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: str = "ok"  # "ok" | "error" | "busy" | "interrupted"
    error: str | None = None
    regenerated_from_id: int | None = None  # the first sibling, for a regenerated reply
    author_id: str = "bot"


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    """A stored message as memory reads it: to embed it, or to show it recalled."""

    id: int
    conversation_id: int
    platform: str
    chat_id: str
    thread_id: str
    role: str  # "user" | "assistant"
    author_id: str
    author_name: str
    character: str | None
    text: str
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredSummary:
    """One extension of a conversation's story so far (a row of ``summaries``)."""

    id: int
    conversation_id: int
    first_message_id: int
    last_message_id: int
    text: str
    model: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ChatSummary:
    """A conversation's current summary with the chat it belongs to (the studio, the CLI)."""

    summary: StoredSummary
    platform: str
    chat_id: str
    thread_id: str


@dataclass(frozen=True, slots=True)
class StoredNote:
    """What a character knows about a person (a row of ``person_notes``)."""

    id: int
    character: str
    platform: str
    user_id: str
    text: str
    scope: str  # "shared" | "private"
    chat_id: str  # where it was made
    source: str  # "user" | "model" | "rules" | "studio"
    message_id: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What forgetting a person removed."""

    notes: int
    vectors: int
    summaries: int  # summary rows removed; their conversations are summarised again
    conversations: int


@dataclass(frozen=True, slots=True)
class SceneMember:
    """A character in a chat's scene by /join: it sees the chat's messages after
    ``joined_after`` (a message id; 0: every one)."""

    character: str
    joined_after: int
