"""Korean characters end to end: the shipped Korean card and Q-A pairs load and import, and
a Telegram chat in Korean runs through the real python-telegram-bot client against the fake
server, on a tiny Gemma 3 written as a GGUF in the test and served by the local engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("gguf")

from adapters.telegram_adapter import TelegramAdapter
from bot.config import ModelSettings, TelegramSettings, load_config
from bot.languages import dominant_script
from charbot.cli import main
from engine.local_backend import LocalModel
from tests import tiny_gemma
from tests.conftest import MakeCore
from tests.fake_telegram import FakeTelegram
from tests.polling import until
from tests.test_telegram import ALICE, TOKEN, replies_stored

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "korean.toml"
PAIRS = ROOT / "examples" / "bram_ko_qa.csv"


@pytest.fixture
def korean_config(tmp_path: Path) -> Path:
    """The shipped Korean example, copied so its data folders land in the test's folder."""
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder)
    shutil.copy(PAIRS, folder)
    return folder / EXAMPLE.name


def test_the_korean_card_and_its_pairs_load_and_import(
    korean_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(korean_config)
    (bram,) = config.characters
    assert bram.name == "브람" and config.model.base == "gemma3-270m"
    assert dominant_script(bram.description + bram.greeting) == "Hangul"

    pairs = korean_config.parent / PAIRS.name
    code = main(
        ["data", "import", str(pairs), "--character", "브람", "--config", str(korean_config)]
    )
    assert code == 0, capsys.readouterr().err
    (train,) = (korean_config.parent.parent / "data" / "datasets").rglob("train.jsonl")
    records = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 40
    first = records[0]
    text = json.dumps(first, ensure_ascii=False)
    assert "고양이 이름이 뭐예요?" in text and "패덤" in text


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    await server.start()
    yield server
    await server.close()


async def test_a_korean_chat_through_telegram_on_a_gemma_gguf(
    fake: FakeTelegram, make_core: MakeCore, korean_config: Path, tmp_path: Path
) -> None:
    path = tiny_gemma.write_gguf(tmp_path / "tiny-gemma3.gguf", tiny_gemma.build_model(seed=5))
    settings = ModelSettings(
        base=str(path), cache_dir=tmp_path / "models", batch_wait_ms=5, max_new_tokens=12
    )
    model = LocalModel(settings, progress=False, worker="thread")
    await model.start()
    (bram,) = load_config(korean_config).characters
    core = await make_core(model=model, characters=[bram], max_new_tokens=12)
    adapter = TelegramAdapter(TelegramSettings(enabled=True, base_url=fake.base_url), core, TOKEN)
    adapter.poll_timeout = 1.0
    await adapter.start()
    try:
        fake.user_says("안녕하세요, 여기가 어디예요?", user_id=ALICE)
        (reply,) = await replies_stored(core)
        wanted = f"브람\n{reply.text.strip()}".strip()
        shown = await until(
            lambda: [m for m in fake.bot_messages(ALICE) if m["text"].strip() == wanted]
        )
    finally:
        await adapter.stop()
        await model.close()

    assert reply.character == "브람"
    prompt = json.loads(reply.prompt_json or "[]")
    said = " ".join(m["content"] for m in prompt)
    assert "갈매기 바위의 등대" in said and "안녕하세요, 여기가 어디예요?" in said
    # The tiny vocabulary spells Hangul in byte tokens: streaming must never show half a
    # character, and what Telegram shows is what was stored.
    assert "\ufffd" not in reply.text
    assert len(shown) == 1  # one message, its name line first, holding the stored text
