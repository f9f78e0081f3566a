"""Clean turns: leading name tags stripped, generation cut at the next speaker's turn — in the
filter across every chunk split, and through the core with a FakeModel and a tiny model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bot.characters import Character
from bot.turns import TURN_MARKERS, TurnFilter
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound
from tests.tiny_model import build_tokenizer

NAMES = ("Mara", "Bram", "Alex")


def stream(text: str, cuts: list[int], names=NAMES) -> tuple[list[str], str]:
    """Feed ``text`` split at ``cuts``; what was shown after each chunk, and the final text."""
    turns = TurnFilter(names)
    shown = []
    bounds = [0, *cuts, len(text)]
    for start, end in itertools.pairwise(bounds):
        shown.append(turns.feed(text[start:end]))
        if turns.stopped:
            break
    return shown, turns.text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Mara: (smirks) Hello there.", "(smirks) Hello there."),
        ("Mara: Mara: twice tagged", "twice tagged"),
        ("**Mara:** in bold", "in bold"),
        ("  bram : lower case, anyone's tag", "lower case, anyone's tag"),
        ("Fine, thanks.\nAlex: Oh my god, really?", "Fine, thanks."),
        ("One.\nTwo.\n\nMara: I answer myself", "One.\nTwo."),
        ("Sure.<|im_end|><|im_start|>user\nmore", "Sure."),
        ("Marathon runner? Not me.", "Marathon runner? Not me."),
        ("Alexandra said hi.\nMara is here.", "Alexandra said hi.\nMara is here."),
        ("Note: this stays", "Note: this stays"),
    ],
)
def test_every_chunk_split_gives_the_same_clean_reply(raw: str, expected: str) -> None:
    for first in range(len(raw) + 1):
        for second in range(first, len(raw) + 1, 3):
            shown, final = stream(raw, [first, second])
            assert final == expected, (first, second)
            # Nothing ever shown is later taken back: each shown text is a prefix of the
            # reply, so no name tag or next turn ever flashes on screen.
            assert all(expected.startswith(s) for s in shown), (first, second, shown)


def test_text_that_may_become_a_tag_is_held_back_until_decided() -> None:
    turns = TurnFilter(NAMES)
    assert turns.feed("Ma") == ""
    assert turns.feed("ra") == ""
    assert turns.feed(": hi") == "hi"
    assert turns.feed("\nAl") == "hi"  # maybe Alex's turn
    assert turns.feed("ways.") == "hi\nAlways."
    assert turns.feed("\n<|im") == "hi\nAlways."
    assert turns.feed("_end|>") == "hi\nAlways." and turns.stopped
    assert turns.feed(" ignored") == "hi\nAlways."


async def test_a_fake_next_turn_is_neither_shown_nor_stored(make_core: MakeCore) -> None:
    model = FakeModel(["Aria: Happy to help.\nSam: Oh my god, thank you!\nAria: You're welcome."])
    core = await make_core(model=model, characters=[Character(name="Aria")])
    target = RecordingTarget()
    result = await core.handle(inbound("Can you help?"), target)
    assert result is not None and result.text == "Happy to help."
    assert target.text == "Happy to help."
    reply = (await core.store.list_messages())[-1]
    assert reply.text == "Happy to help." and reply.status == "ok"
    assert reply.completion_tokens is not None and reply.completion_tokens < 8
    # The next prompt carries the clean reply, not the invented turn.
    await core.handle(inbound("And then?"), RecordingTarget())
    history = [m["content"] for m in model.requests[-1].messages]
    assert "Happy to help." in history and not any("Oh my god" in h for h in history)


# -- a real backend: a tiny Llama scripted to write its name, a line, then a new turn ------


def build_script_model(directory: Path, script: str) -> Path:
    """A tiny Llama whose greedy reply cycles through ``script`` (every character distinct
    but the last, which leads back to the first): a bigram machine. Its layers add nothing
    to the residual stream, so the logits depend only on the current token."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    ids = tokenizer.encode(script, add_special_tokens=False)
    assert len(ids) == len(script) and len(set(ids[:-1])) == len(ids) - 1
    size = len(tokenizer) + (-len(tokenizer)) % 8  # one-hot embeddings: hidden >= vocab
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.embed_tokens.weight[:, : len(tokenizer)] = torch.eye(len(tokenizer))
        for norm in (
            model.model.norm,
            *[
                m
                for layer in model.model.layers
                for m in (layer.input_layernorm, layer.post_attention_layernorm)
            ],
        ):
            norm.weight.fill_(1.0)
        head = model.lm_head.weight
        for current, following in itertools.pairwise(ids):
            head[following, current] = 10.0
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


async def test_the_local_backend_stops_at_a_new_turn(make_core: MakeCore, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from bot.config import ModelSettings
    from engine.local_backend import LocalModel

    # The generation prompt ends with "\n", so the reply is "Al: Hi.\nAl: Hi.\n…" forever.
    directory = build_script_model(tmp_path / "script", "\nAl: Hi.\n")
    settings = ModelSettings(base=str(directory), dtype="float32")
    model = LocalModel(settings, progress=False, worker="thread")
    raw = ""
    await model.start()
    try:
        from engine import GenerationRequest, Sampling

        request = GenerationRequest(
            [{"role": "user", "content": "x"}], Sampling(max_new_tokens=20, temperature=0)
        )
        async for chunk in model.stream(request):
            raw += chunk.text
        assert raw.startswith("Al: Hi.\nAl: Hi.\n")  # the model on its own runs on
        core = await make_core(
            model=model,
            characters=[Character(name="Al")],
            temperature=0.0,
            max_new_tokens=20,
            repetition_penalty=1.0,
        )
        target = RecordingTarget()
        result = await core.handle(inbound("Hello?"), target)
        assert result is not None and result.status == "ok"
        assert result.text == "Hi." and target.text == "Hi."
        reply = (await core.store.list_messages())[-1]
        assert reply.text == "Hi." and reply.completion_tokens < 20
    finally:
        await model.close()


def test_held_back_marker_starts_match_a_check_of_every_prefix() -> None:
    """The tail lookup holds back exactly what checking every prefix of every marker did."""
    import random

    def every_prefix(text: str, markers: tuple[str, ...]) -> int:
        hold = len(text)
        for marker in markers:
            for size in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:size]):
                    hold = min(hold, len(text) - size)
                    break
        return hold

    chosen = random.Random(7)
    markers = (*TURN_MARKERS, "<|a", "ab")
    turns = TurnFilter([], markers)
    pieces = ["<", "|", "im", "_", "start", "end", "[", "INST", "]", "</", "s", "a", "b", "x", " "]
    for _ in range(3000):
        text = "".join(chosen.choice(pieces) for _ in range(chosen.randint(0, 8)))
        assert turns._hold_from(text) == every_prefix(text, markers), text
