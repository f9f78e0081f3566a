"""What a base model cannot write: a card mostly in a script its tokenizer handles badly.

A model whose tokenizer breaks a script into many tokens per character saw little of that
script in training and writes it badly (SmolLM2-135M answers a Korean card in broken
Korean, then English). The measure is the tokenizer's own: tokens per character of the
card's text against tokens per character of an English paragraph, on the same tokenizer.
Measured (docs/configuration.md, "Languages"):

| tokenizer | English | Korean | Japanese | Russian |
|---|---|---|---|---|
| SmolLM2-135M | 0.24 | 1.97 (8.2×) | 1.79 (7.5×) | 0.73 (3.0×) |
| Gemma 3 270M | 0.24 | 0.60 (2.5×) | 0.68 (2.8×) | 0.33 (1.4×) |

A Hangul or kana character carries more than a Latin letter, so a multilingual tokenizer
still spends 2–3× English's tokens per character; :data:`LIMIT` (4×) sits between the two.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from bot.characters import Character

LIMIT = 4.0  # tokens per character, as a multiple of English's on the same tokenizer
ENGLISH = (
    "Bram keeps the lighthouse on Gull Rock, alone but for a cat named Fathom. He has kept "
    "it for forty winters, and he talks to the sea when nobody listens."
)
FIX = (
    'set [model] base to a multilingual model, e.g. "Qwen/Qwen2.5-0.5B-Instruct" or '
    '"google/gemma-3-1b-it" (docs/configuration.md, Languages)'
)
# (first, last code point, script); the first match wins.
_RANGES = (
    (0x0041, 0x024F, "Latin"),
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x04FF, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x1100, 0x11FF, "Hangul"),
    (0x3040, 0x30FF, "Kana"),
    (0x3130, 0x318F, "Hangul"),
    (0x4E00, 0x9FFF, "Han"),
    (0xAC00, 0xD7A3, "Hangul"),
)
LANGUAGES = {
    "Hangul": "Korean",
    "Kana": "Japanese",
    "Han": "Chinese",
    "Cyrillic": "Cyrillic-script",
    "Greek": "Greek",
    "Hebrew": "Hebrew",
    "Arabic": "Arabic-script",
    "Devanagari": "Devanagari-script",
    "Thai": "Thai",
}


def script_of(char: str) -> str | None:
    """The script of one letter (None: not a letter of a known script)."""
    if not char.isalpha():
        return None
    point = ord(char)
    for first, last, script in _RANGES:
        if first <= point <= last:
            return script
    return None


def dominant_script(text: str) -> str | None:
    """The script of most of ``text``'s letters (Japanese: kana with or without Han), or
    None when no script holds more than half of them."""
    counts = Counter(s for s in map(script_of, text) if s is not None)
    total = sum(counts.values())
    if not total:
        return None
    if counts["Kana"] and counts["Kana"] + counts["Han"] > total / 2:
        return "Kana"
    script, count = counts.most_common(1)[0]
    return script if count > total / 2 else None


def card_text(character: Character) -> str:
    """The card's own words: what the model is asked to speak like."""
    parts = (
        character.description,
        character.personality,
        character.scenario,
        character.greeting,
        character.example_dialogue,
    )
    return "\n".join(p for p in parts if p)


def script_warnings(
    characters: Iterable[Character], count: Callable[[str], int], model: str
) -> list[str]:
    """One line per character whose card is mostly in a script ``model``'s tokenizer
    (``count``: tokens of a text) spends at least :data:`LIMIT` times English's tokens per
    character on."""
    english = count(ENGLISH) / len(ENGLISH)
    lines = []
    for character in characters:
        text = card_text(character)
        script = dominant_script(text)
        if script in (None, "Latin") or not english:
            continue
        ratio = count(text) / len(text) / english
        if ratio >= LIMIT:
            language = LANGUAGES.get(script, script)
            lines.append(
                f"{character.name}'s card is mostly {language} text, and {model} reads it at "
                f"{ratio:.1f}× the tokens per character of English: it cannot write "
                f"{language} well; {FIX}"
            )
    return lines
