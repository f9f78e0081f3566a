"""Our GGUF → tokenizer files conversion behaves as transformers' own GGUF conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ModelError

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from engine import local_files  # noqa: E402
from engine.gguf_tokenizer import (  # noqa: E402
    UnsupportedTokenizer,
    byte_alphabet,
    read_metadata,
    write_tokenizer,
)

CORPUS = [
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 0 7 42 1234567890 3.14159 -12,345.67 1e-9 2024-06-01",
    "Punctuation!?… «quoted» “curly” 'single' — dashes -- and ... dots;:",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\t\tmore\ttabs",
    "line one\nline two\n\n\nafter blank lines\r\nwindows line\n",
    "many     spaces      between          words",
    "emoji 😀👍🏽🇫🇷 👨‍👩‍👧 ❤️ and ✨sparkles✨",
    "한국어 텍스트입니다. 안녕하세요!",
    "中文文本，你好世界。日本語のテキストも。",
    "Русский текст: Привет, мир! Ёжик.",
    "Ελληνικά, עברית, العربية, हिन्दी",
    'def f(x: int) -> int:\n    return x ** 2  # square\n\nprint(f"{f(3)=}")\n',
    "for (let i = 0; i < n; i++) { total += a[i]; }",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside and <|im_end|>",
    "",
    " ",
    "\n",
    "a",
    "ÿ\x00\x01\x7f control chars \u200b zero width",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are Aria, a cheerful starship navigator."},
        {"role": "user", "content": "Where are we headed?"},
        {"role": "assistant", "content": "To the Vega system! 🚀"},
        {"role": "user", "content": "How long?\nBe precise."},
    ],
    [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "你好"}],
]


# --- the bundled model against transformers ------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Our files and transformers' files for the bundled GGUF, and both loaded the way the
    bot loads a converted directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = local_files.find_bundled_gguf()
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    write_tokenizer(source, ours)
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(theirs)
    return {
        "ours": ours,
        "theirs": theirs,
        "our_tokenizer": PreTrainedTokenizerFast.from_pretrained(ours),
        "their_tokenizer": PreTrainedTokenizerFast.from_pretrained(theirs),
    }


@pytest.mark.integration
def test_the_bundled_files_match_transformers(bundled: dict) -> None:
    ours, theirs = bundled["ours"], bundled["theirs"]
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    # tokenizer.json is byte for byte the same today; parsed, so that a change in
    # transformers' JSON layout alone would not fail this
    assert json.loads((ours / "tokenizer.json").read_text()) == json.loads(
        (theirs / "tokenizer.json").read_text()
    )
    assert (ours / "chat_template.jinja").read_bytes() == (
        theirs / "chat_template.jinja"
    ).read_bytes()
    their_config = json.loads((theirs / "tokenizer_config.json").read_text())
    for leftover in (
        "is_local",
        "local_files_only",
    ):  # how transformers was called, not the tokenizer
        their_config.pop(leftover, None)
    assert json.loads((ours / "tokenizer_config.json").read_text()) == their_config


@pytest.mark.integration
def test_the_bundled_tokenizer_behaves_as_transformers(bundled: dict) -> None:
    ours, theirs = bundled["our_tokenizer"], bundled["their_tokenizer"]
    for attribute in (
        "all_special_tokens",
        "all_special_ids",
        "bos_token",
        "bos_token_id",
        "eos_token",
        "eos_token_id",
        "pad_token",
        "pad_token_id",
        "unk_token",
        "unk_token_id",
        "add_bos_token",
        "add_eos_token",
        "model_max_length",
        "chat_template",
    ):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.get_vocab() == theirs.get_vocab()
    assert len(ours) == len(theirs) == 49152
    for text in CORPUS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours(text)["input_ids"] == ids  # no BOS/EOS added around it either way
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            )
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == theirs.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
            assert ours.encode(text) == theirs.encode(text)
    # the SmolLM2 template: its default system line where none is given, then the prompt
    text = ours.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n")


# --- a tiny synthetic file -----------------------------------------------------------------

MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tiny_gguf(path: Path, model: str = "gpt2", **options) -> list[str]:
    """A tokenizer-only GGUF: three control tokens, the 256 byte tokens, one token per merge,
    a user-defined ``<think>``; returns its token list. ``options``: pre, add_bos."""
    tokens = [*SPECIALS, *byte_alphabet().values(), *(m.replace(" ", "") for m in MERGES)]
    tokens.append("<think>")
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(options.get("pre", "smollm"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(options.get("add_bos", False))
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    writer.add_array("general.tags", ["a", "b"])  # other metadata the reader walks past
    writer.add_float32("general.something", 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


def test_a_tiny_gguf_round_trips(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tokens = write_tiny_gguf(tmp_path / "tiny.gguf")
    metadata = read_metadata(tmp_path / "tiny.gguf")
    assert metadata["tokenizer.ggml.tokens"] == tokens
    assert metadata["tokenizer.ggml.merges"] == MERGES
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert metadata["general.tags"] == ["a", "b"] and metadata["general.something"] == 0.5

    write_tokenizer(tmp_path / "tiny.gguf", tmp_path / "out", metadata)
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    ids = tokenizer.encode("hello world").ids
    assert [tokens[i] for i in ids] == ["hello", "Ġworld"]  # every merge applied
    assert tokenizer.encode("<|im_start|>hi<think>").ids == [1, 74, 75, len(tokens) - 1]
    for text in ["hello world", "  héllo\n\twörld 😀 한국 Привет", "<|im_end|> x"]:
        assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    names = (config["bos_token"], config["eos_token"], config["unk_token"])
    assert names == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert config["pad_token"] is None and config["tokenizer_class"] == "TokenizersBackend"
    assert (tmp_path / "out" / "chat_template.jinja").read_text().startswith("{% for m in")


def test_add_bos_token_and_the_llama3_split(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tokens = write_tiny_gguf(tmp_path / "tiny.gguf", pre="llama-bpe", add_bos=True)
    write_tokenizer(tmp_path / "tiny.gguf", tmp_path / "out")
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    ids = tokenizer.encode("hello world").ids
    assert [tokens[i] for i in ids] == ["<|im_start|>", "hello", "Ġworld"]
    # Llama 3 splits numbers into runs of three digits, GPT-2 keeps the run whole
    assert tokenizer.pre_tokenizer.pre_tokenize_str("12345")[0][0] == "123"


def test_other_tokenizers_are_refused_clearly(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "spm.gguf", model="llama")
    with pytest.raises(UnsupportedTokenizer, match="tokenizer model 'llama'; only byte-level"):
        write_tokenizer(tmp_path / "spm.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    write_tiny_gguf(tmp_path / "qwen.gguf", pre="qwen2")
    with pytest.raises(UnsupportedTokenizer, match="pre-tokenizer 'qwen2'"):
        write_tokenizer(tmp_path / "qwen.gguf", tmp_path / "out")
    assert issubclass(UnsupportedTokenizer, ModelError)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all, just some bytes")
    with pytest.raises(ModelError, match="not a GGUF file"):
        read_metadata(tmp_path / "junk.gguf")
    whole = (tmp_path / "qwen.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelError, match="cannot read the metadata"):
        read_metadata(tmp_path / "cut.gguf")


def test_convert_bundled_falls_back_to_transformers(tmp_path: Path, monkeypatch) -> None:
    """A tokenizer our converter refuses goes to the transformers subprocess (faked here)."""
    from engine import gguf_convert

    write_tiny_gguf(tmp_path / "spm.gguf", model="llama")
    monkeypatch.setattr(local_files, "find_bundled_gguf", lambda: tmp_path / "spm.gguf")

    def fake_weights(gguf_path: Path, out_dir: Path, bar=None) -> None:
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")

    def fake_transformers(gguf_path: Path, out: Path) -> subprocess.Popen:
        script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('{}')"
        args = [sys.executable, "-c", script, str(out / "tokenizer_config.json")]
        return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)

    monkeypatch.setattr(gguf_convert, "convert_llama_gguf", fake_weights)
    monkeypatch.setattr(local_files, "_start_tokenizer_conversion", fake_transformers)
    target = local_files.convert_bundled(tmp_path / "cache", progress=False)
    assert local_files.is_complete(target)
    assert not (target / "tokenizer.json").exists()  # ours wrote nothing
