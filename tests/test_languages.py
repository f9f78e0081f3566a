"""A card in a script the base model's tokenizer handles badly gets one start-up line:
tokenizers trained in the test on English alone, and on English and Korean."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from bot.characters import Character
from bot.languages import ENGLISH, dominant_script, script_warnings
from engine import ChatMessages
from tests.conftest import MakeCore
from tests.fakes import FakeModel

KOREAN = (
    "브람은 갈매기 바위의 등대를 지킨다. 고양이 패덤 말고는 혼자다. 그는 사십 년의 겨울 "
    "동안 등대를 지켜 왔고, 아무도 듣지 않을 때 바다에게 말을 건다."
)
BRAM_KO = Character(name="Bram", description=KOREAN, greeting="안녕하세요, 등대에 온 걸 환영해요.")
MARA = Character(name="Mara", description=ENGLISH.replace("Bram", "Mara"))


def tokenizer(texts: list[str]) -> Callable[[str], int]:
    """A byte-level BPE trained on ``texts``: a script it never saw falls apart into bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts * 20, trainer)
    return lambda text: len(tok.encode(text).ids)


ENGLISH_ONLY = [ENGLISH, "The sea is grey tonight and the lamp still turns.", MARA.description]
BOTH = [*ENGLISH_ONLY, KOREAN, BRAM_KO.greeting]


@pytest.mark.parametrize(
    ("text", "script"),
    [
        (KOREAN, "Hangul"),
        ("ブラムはカモメ岩の灯台を守っている。", "Kana"),
        ("布拉姆守着灯塔。", "Han"),
        ("Брам охраняет маяк.", "Cyrillic"),
        (ENGLISH, "Latin"),
        ("Bram 브람 Брам", None),  # no script holds more than half the letters
        ("1234 ...", None),
    ],
)
def test_the_dominant_script_of_a_text(text: str, script: str | None) -> None:
    assert dominant_script(text) == script


def test_a_korean_card_on_an_english_only_tokenizer_gets_one_line() -> None:
    (line,) = script_warnings([MARA, BRAM_KO], tokenizer(ENGLISH_ONLY), "smollm2")
    assert line.startswith("Bram's card is mostly Korean text, and smollm2 reads it at ")
    assert "cannot write Korean well; set [model] base to a multilingual model" in line


def test_a_tokenizer_that_learnt_korean_gets_no_line() -> None:
    assert script_warnings([MARA, BRAM_KO], tokenizer(BOTH), "gemma3") == []


class TokenizedModel(FakeModel):
    """The fake model with a real (tiny) tokenizer behind count_tokens."""

    def __init__(self, count: Callable[[str], int]) -> None:
        super().__init__()
        self.count = count

    def count_tokens(self, messages: ChatMessages) -> int:
        return sum(self.count(m["content"]) + 3 for m in messages)


async def test_the_core_measures_with_its_models_tokenizer(make_core: MakeCore) -> None:
    core = await make_core(model=TokenizedModel(tokenizer(ENGLISH_ONLY)), characters=[BRAM_KO])
    (line,) = core.script_warnings()
    assert "Bram's card is mostly Korean text" in line
    plain = await make_core(model=TokenizedModel(tokenizer(BOTH)), characters=[BRAM_KO])
    assert plain.script_warnings() == []
