"""Notes from what people say: a lasting fact a person states about themselves.

``[memory] extract = "rules"`` (the default) keeps a sentence in which the person says
something about themselves that lasts ("my brother is a nurse", "I am vegetarian", "저는
간호사예요") — their own words, so nothing is invented, at no model cost. ``"model"`` asks
the memory model to write the fact as a note, and keeps it only if it uses the message's
own words (a small model otherwise writes facts that nobody said). ``"off"``: notes come
only from /remember and the studio.
"""

from __future__ import annotations

import re

from bot.memory.writing import write
from engine import ChatModel

_SENTENCES = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")
# A sentence may open with a word or two of its own ("Oh, ...", "Next spring, ..."), and a
# person's family and pets are "my" or "our" (benchmarks/memory.py: "Our dog is called
# Biscuit", "My grandmother Rosa still bakes bread", "In August I'm running a marathon").
_FIRST_PERSON = re.compile(
    r"^(?:(?:and|but|so|well|oh|also|btw|by the way|actually|"
    r"(?:next|this|last|every) (?:week|month|year|spring|summer|autumn|fall|winter)|"
    r"in (?:january|february|march|april|may|june|july|august|september|october|november|"
    r"december|spring|summer|autumn|winter))[,\s]+)*"
    r"(?:i am|i'm|im|i have|i've|i live|i work|i study|i like|i love|i hate|i prefer|"
    r"i can't|i cannot|i don't|i do not|i never|i always|i was born|i grew up|i speak|"
    r"i moved|i own|i play|i teach|i used to|call me|(?:my|our) (?:\w+[\s']+){1,3}"
    r"(?:is|are|was|were|has|have|lives|works|likes|loves|died|got|lost|left|became|"
    r"still \w+))\b",
    re.IGNORECASE,
)
# "I'm fine", "I'm back": how someone is right now, not what lasts.
_PASSING = re.compile(
    r"^(?:i am|i'm|im)\s+(?:just\s+|so\s+|very\s+|really\s+|not\s+)*"
    r"(?:fine|good|ok|okay|here|back|sorry|sure|ready|tired|lost|confused|glad|happy to|"
    r"going|trying|thinking|wondering|asking|looking|curious|listening|kidding|joking|done)\b",
    re.IGNORECASE,
)
_KOREAN_SELF = re.compile(r"(?:^|\s)(?:저는|나는|전|난|제가|내가|제|내|우리)\s")
_KOREAN_END = re.compile(r"(?:다|요|야|어|지|죠)[.!。！]*$")
_WORD = re.compile(r"\w+", re.UNICODE)
MIN_WORDS, MAX_WORDS = 3, 40


def rule_notes(text: str) -> list[str]:
    """The sentences of ``text`` in which the speaker states a lasting fact about
    themselves; none from a question."""
    found = []
    for match in _SENTENCES.finditer(text):
        sentence = " ".join(match.group().split())
        words = _WORD.findall(sentence)
        if len(words) > MAX_WORDS or sentence.endswith(("?", "？")):
            continue
        english = (
            len(words) >= MIN_WORDS
            and _FIRST_PERSON.match(sentence)
            and not _PASSING.match(sentence)
        )
        # Korean packs a sentence into fewer words ("저는 간호사예요": I am a nurse).
        korean = _KOREAN_SELF.search(" " + sentence) and _KOREAN_END.search(sentence)
        if english or korean:
            found.append(sentence[0].upper() + sentence[1:])
    return found


MODEL_PROMPT = (
    'Here is a chat message from {name}:\n"{text}"\n\nIf it tells a lasting fact about '
    "{name} (family, work, home, health, what they like or plan), write that fact as one "
    "short sentence about {name}, in the message's language. Otherwise write NONE."
)


async def model_note(model: ChatModel, name: str, text: str) -> str | None:
    """The memory model's note about ``name`` from ``text``, or None. Kept only when half
    its words (other than the name) are the message's own."""
    if not any(rule in text.lower() for rule in ("i ", "i'", "my ", "me ")) and not (
        _KOREAN_SELF.search(" " + text)
    ):
        return None  # nothing said in the first person: no model call
    prompt = [{"role": "user", "content": MODEL_PROMPT.format(name=name, text=text[:600])}]
    written = await write(model, prompt, 48)
    note = written.text.strip().strip('"').splitlines()[0] if written.text.strip() else ""
    if not written.complete or not note or "NONE" in note.upper():
        return None
    said = {w.lower() for w in _WORD.findall(text)}
    words = [w.lower() for w in _WORD.findall(note) if w.lower() != name.lower()]
    if not words or sum(w in said for w in words) * 2 < len(words):
        return None
    return note
