"""Clean turns: a streamed reply ends where the model starts writing someone else's turn.

Small chat models continue past their own turn: they write ``Alex: Oh my god, …`` for the
user, or start their reply with their own name tag (``Mara: (smirks) …``), which a platform
that already shows the name then shows twice. :class:`TurnFilter` sits between any model's
stream and the platform, so it works for every backend: it strips a leading ``Name:`` and
cuts the reply at the first new turn — a known speaker's ``Name:`` at the start of a line,
or a chat template's turn marker — and what it cut is neither shown nor stored.

Streamed chunks split words anywhere (``"Ma"`` + ``"ra: hi"``), so text that could still
become a name tag or a marker is held back until the next chunk decides it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from bot.characters import Character
from engine import GenerationRequest, Usage, lora_version

# Turn markers of common chat templates (ChatML, Llama 3, Mistral, Zephyr, Gemma, Phi).
# Backends usually stop at their own end-of-turn token, but a marker decoded as text (or a
# model that writes one as plain text) must still end the reply.
TURN_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "</s>",
)

# Decoration a model puts around a name tag: **Mara:**, *Mara*:, [Mara]:, "Mara:".
_DECOR = "*_[\"'"
_DECOR_END = "*_]\"'"


class TurnFilter:
    """Feed it a model's text deltas; it returns the text that is safe to show so far.

    ``names`` are the speakers of the scene (every character, the users taking part): a
    line starting with one of them followed by ``:`` is a new turn. The reply's own leading
    name tag (anyone's) is stripped. After :attr:`stopped` is True, nothing more is shown.
    """

    def __init__(self, names: Iterable[str], markers: Iterable[str] = TURN_MARKERS) -> None:
        unique = {n.strip() for n in names if n and n.strip()}
        self._names = sorted((n.lower() for n in unique), key=len, reverse=True)
        self._markers = tuple(m for m in markers if m)
        # Each marker's proper prefixes by length: the text's tail is looked up in these
        # (a check of every prefix of every marker against the text's end cost 120 str
        # calls per streamed chunk, a fifth of the core's time per message with the echo
        # backend, benchmarks/core.py).
        self._prefixes: dict[int, set[str]] = {}
        for marker in self._markers:
            for size in range(1, len(marker)):
                self._prefixes.setdefault(size, set()).add(marker[:size])
        alternatives = "|".join(re.escape(n) for n in sorted(unique, key=len, reverse=True))
        # "Name:" with decoration, or "[Name]" — the way bot.prompt marks others' lines.
        tag = (
            rf"(?:[ \t]*[{re.escape(_DECOR)}]*(?:{alternatives})[{re.escape(_DECOR_END)}]*[ \t]*:"
            rf"|[ \t]*\[(?:{alternatives})\])"
            if alternatives
            else r"(?!)"
        )
        # A leading tag, possibly repeated ("Mara: Mara: hi"), and whatever space follows it.
        self._leading = re.compile(rf"\A\s*(?:{tag}[{re.escape(_DECOR_END)}]*\s*)+", re.I)
        self._new_turn = re.compile(rf"\n{tag}", re.I)
        self._raw = ""
        self._shown = ""
        self.stopped = False

    @property
    def text(self) -> str:
        """The reply so far with its leading tag and anything after a new turn removed."""
        return self._body(final=True)

    def feed(self, delta: str) -> str:
        """Add a chunk of model output; return the whole text to show now (not a delta)."""
        if not self.stopped:
            self._raw += delta
            self._shown = self._body(final=False)
        return self._shown

    def _body(self, *, final: bool) -> str:
        raw = self._raw
        leading = self._leading.match(raw)
        raw = raw[leading.end() :] if leading else raw.lstrip()
        if not final and self._could_be_tag(raw):
            return ""  # "Ma" may yet become "Mara:"
        cut = self._first_stop(raw)
        if cut is not None:
            self.stopped = True
            return raw[:cut].rstrip()
        if not final:
            raw = raw[: self._hold_from(raw)]
        return raw.rstrip()  # trailing space is invisible and may precede a new turn

    def _first_stop(self, text: str) -> int | None:
        found = [text.find(m) for m in self._markers]
        turn = self._new_turn.search(text)
        if turn:
            found.append(turn.start())
        hits = [at for at in found if at >= 0]
        return min(hits) if hits else None

    def _could_be_tag(self, text: str) -> bool:
        """True while ``text`` (a line's start) may still turn out to be ``Name:``."""
        if len(text) > 80 or "\n" in text:
            return False
        core = text.lstrip(" \t" + _DECOR).lower()
        if not core:
            return True
        for name in self._names:
            if name.startswith(core.rstrip()) and core == core.rstrip():
                return True
            if core.startswith(name) and not core[len(name) :].strip(" \t" + _DECOR_END):
                return True
        return False

    def _hold_from(self, text: str) -> int:
        """Where held-back text starts: a last line that may become a new turn, or the
        start of what may become a turn marker."""
        hold = len(text)
        line = text.rfind("\n")
        if line >= 0 and self._could_be_tag(text[line + 1 :]):
            hold = line
        # The longest end of the text that is the start of a marker.
        for size in range(min(len(self._prefixes), len(text)), 0, -1):
            if text[-size:] in self._prefixes[size]:
                return min(hold, len(text) - size)
        return hold


def scene_filter(characters: Iterable[Character], chain: Sequence[Any], user: str) -> TurnFilter:
    """A filter for one reply: every character and every person seen in ``chain`` (rows
    with ``role`` and ``author_name``) is a speaker whose ``Name:`` starts a new turn."""
    names = [c.name for c in characters]
    names.append(user)
    names.extend(row.author_name for row in chain if row.role == "user")
    return TurnFilter(names)


def cut_short_usage(usage: Usage, request: GenerationRequest, chunks: int) -> Usage:
    """Usage for a generation the core stopped at a new turn, before the backend's final
    chunk (which carries the real figures) arrived."""
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens or chunks,  # local backends: a token a chunk
        model=usage.model,
        # The version the backend would report.
        lora_version=usage.lora_version
        or (lora_version(request.lora.path) if request.lora else None),
        finish_reason="stop",
    )
