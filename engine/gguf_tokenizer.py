"""A GPT-2-style BPE GGUF's tokenizer as Hugging Face files, without transformers.

Why: ``AutoTokenizer.from_pretrained(dir, gguf_file=...).save_pretrained(out)`` took 5-11 s
of a first start, mostly importing transformers, against well under a second for reading
the metadata here and handing the vocabulary and merges to the ``tokenizers`` library.

What: ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` as
transformers' GGUF conversion writes them for ``tokenizer.ggml.model == "gpt2"``: a
byte-level BPE over the file's tokens and merges, its control tokens as special added
tokens, and a post-processor that adds BOS/EOS only where the file says so.
``tests/test_gguf_tokenizer.py`` compares the two on the bundled model.

Only the tokenizers the bundled SmolLM2 file and Llama-3-style files need are built; any
other raises :class:`UnsupportedTokenizer`, and the caller can fall back to transformers.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

from engine.errors import ModelError

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types with a fixed width, as struct codes (the spec's numbering)
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, key/value count
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types

# llama.cpp's pre-tokenizer names → the split regex the merges were learned with; None is
# GPT-2's own regex (ByteLevel's built-in), which transformers also uses for "smollm".
# Other names mean other splits, which are left to transformers' bigger table.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS: dict[str | None, str | None] = {
    None: None,
    "gpt2": None,
    "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
}
# transformers' "no limit" (int(1e30)), which its save_pretrained writes for these files
MODEL_MAX_LENGTH = int(1e30)
TOKENIZER_CLASS = "TokenizersBackend"


class UnsupportedTokenizer(ModelError):
    """The file describes a tokenizer this module does not build (transformers may)."""


# --- reading the metadata ------------------------------------------------------------------


def read_metadata(gguf_path: Path) -> dict[str, Any]:
    """Every metadata key of a GGUF (v2/v3) file; the tensor table and data are not read.

    Arrays of numbers come back as tuples, arrays of strings as lists.
    """
    try:
        with open(gguf_path, "rb") as file, _mapped(file) as buf:
            magic, version, _tensors, count = _HEADER.unpack_from(buf, 0)
            if magic != GGUF_MAGIC:
                raise ModelError(f"{gguf_path.name} is not a GGUF file")
            if version not in (2, 3):  # v1 had 32-bit counts; nothing current writes it
                raise ModelError(f"{gguf_path.name} is GGUF v{version}; only v2 and v3 are read")
            pos = _HEADER.size
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key, pos = _read_string(buf, pos)
                (kind,) = _U32.unpack_from(buf, pos)
                metadata[key], pos = _read_value(buf, pos + 4, kind)
            return metadata
    except (struct.error, ValueError) as exc:  # a truncated or garbled file, or bad UTF-8
        raise ModelError(f"cannot read the metadata of {gguf_path.name}: {exc}") from exc


def _mapped(file) -> mmap.mmap:
    return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _read_string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = _U64.unpack_from(buf, pos)
    pos += 8
    return buf[pos : pos + length].decode("utf-8"), pos + length


def _read_value(buf: mmap.mmap, pos: int, kind: int) -> tuple[Any, int]:
    if kind in _FIXED:
        code = "<" + _FIXED[kind]
        return struct.unpack_from(code, buf, pos)[0], pos + struct.calcsize(code)
    if kind == _STRING:
        return _read_string(buf, pos)
    if kind != _ARRAY:
        raise ValueError(f"unknown metadata value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _FIXED:  # one unpack for the whole array: the token types are 49k int32s
        code = f"<{count}{_FIXED[item]}"
        return struct.unpack_from(code, buf, pos), pos + struct.calcsize(code)
    values = []
    if item == _STRING:  # the vocabulary and the merges: this loop is most of the reading
        unpack = _U64.unpack_from
        for _ in range(count):
            (length,) = unpack(buf, pos)
            pos += 8
            values.append(buf[pos : pos + length].decode("utf-8"))
            pos += length
        return values, pos
    for _ in range(count):  # arrays of arrays: allowed by the spec, unused by tokenizers
        value, pos = _read_value(buf, pos, item)
        values.append(value)
    return values, pos


# --- building the tokenizer ----------------------------------------------------------------


def check_supported(metadata: dict[str, Any], name: str = "the GGUF file") -> None:
    """Raise :class:`UnsupportedTokenizer` unless :func:`build_tokenizer` handles this file."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedTokenizer(
            f"{name} has tokenizer model {model!r}; only byte-level BPE ('gpt2') is converted here"
        )
    pre = metadata.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise UnsupportedTokenizer(f"{name} has pre-tokenizer {pre!r}, which is not converted here")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if not isinstance(metadata.get(key), list):
            raise UnsupportedTokenizer(f"{name} has no {key} list")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of bytes: printable Latin-1 bytes stand for themselves,
    the other 68 take the characters from U+0100 up, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {byte: chr(byte) for byte in printable}
    others = (byte for byte in range(256) if byte not in spelling)
    spelling.update((byte, chr(0x100 + n)) for n, byte in enumerate(others))
    return spelling


def build_tokenizer(metadata: dict[str, Any]):  # -> tokenizers.Tokenizer
    """The byte-level BPE :class:`tokenizers.Tokenizer` the metadata describes."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    check_supported(metadata)
    vocab, merges = _vocab_and_merges(metadata)
    try:
        tokenizer = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
    except Exception as exc:  # tokenizers raises a bare Exception for a merge of unknown tokens
        raise ModelError(f"the GGUF file's BPE vocabulary is inconsistent: {exc}") from exc
    tokenizer.pre_tokenizer = _pre_tokenizer(
        PRE_TOKENIZER_SPLITS[metadata.get("tokenizer.ggml.pre")]
    )
    tokenizer.decoder = decoders.ByteLevel()
    _add_whole_tokens(tokenizer, metadata, vocab)
    tokenizer.post_processor = _post_processor(metadata)
    return tokenizer


def _vocab_and_merges(metadata: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    spelling = byte_alphabet()
    alphabet = set(spelling.values())
    # Every real token is stored in the byte alphabet already; one that is not (an added
    # token written as plain text) is respelled from its UTF-8 bytes, as transformers does.
    vocab = {
        token if alphabet.issuperset(token) else "".join(spelling[b] for b in token.encode()): index
        for index, token in enumerate(metadata["tokenizer.ggml.tokens"])
    }
    merges = []
    for merge in metadata["tokenizer.ggml.merges"]:
        pair = merge.split(" ")  # byte-level tokens spell a space "Ġ": one plain space each
        if len(pair) != 2:
            raise ModelError(f"malformed BPE merge {merge!r} in the GGUF file")
        merges.append((pair[0], pair[1]))
    return vocab, merges


def _pre_tokenizer(split: str | None):
    from tokenizers import Regex, pre_tokenizers

    if split is None:  # ByteLevel's own regex is GPT-2's
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _add_whole_tokens(tokenizer, metadata: dict[str, Any], vocab: dict[str, int]) -> None:
    """Mark the tokens that must match whole in the text, never be cut into bytes."""
    from tokenizers import AddedToken

    tokens = metadata["tokenizer.ggml.tokens"]
    # a file without token types has no control tokens to mark
    typed = list(zip(tokens, metadata.get("tokenizer.ggml.token_type") or (), strict=False))
    alphabet = set(byte_alphabet().values())
    # Control tokens (<|im_start|>) are special. One not in the byte alphabet is a mislabel
    # in the file, and adding it would grow the vocabulary past the model's.
    control = [t for t, kind in typed if kind == _CONTROL and alphabet.issuperset(t)]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    # User-defined tokens (<think>) also match whole in llama.cpp, but are not special.
    user = [t for t, kind in typed if kind == _USER_DEFINED and t in vocab]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    # The named special tokens are special even where the file typed them as normal.
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    named = [t for t in special_tokens(metadata).values() if t is not None and t not in added]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in named])


def _post_processor(metadata: dict[str, Any]):
    """BOS/EOS around each sequence where the file asks for them (both off for SmolLM2)."""
    from tokenizers import processors

    tokens = metadata["tokenizer.ggml.tokens"]
    ends = []
    for end in ("bos", "eos"):
        token_id = metadata.get(f"tokenizer.ggml.{end}_token_id")
        if metadata.get(f"tokenizer.ggml.add_{end}_token") and token_id is not None:
            ends.append((tokens[token_id], token_id))
        else:
            ends.append(None)
    bos, eos = ends

    def around(piece: str, type_id: int) -> str:
        parts = [f"{bos[0]}:{type_id}"] if bos else []
        parts.append(f"{piece}:{type_id}")
        return " ".join(parts + ([f"{eos[0]}:{type_id}"] if eos else []))

    return processors.TemplateProcessing(
        single=around("$A", 0),
        pair=f"{around('$A', 0)} {around('$B', 1)}",
        special_tokens=[end for end in ends if end is not None],
    )


def special_tokens(metadata: dict[str, Any]) -> dict[str, str | None]:
    """``{"bos_token": "<|im_start|>", ...}`` from the file's token ids (None where unset)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    names = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
    found = {}
    for name, key in names.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        found[f"{name}_token"] = tokens[token_id] if token_id is not None else None
    return found


def tokenizer_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json`` as transformers writes it for a converted GGUF.

    Left out: ``add_bos_token``/``add_eos_token``, which transformers drops on saving and
    ignores on loading next to a ``tokenizer.json`` (the post-processor carries them), and
    ``is_local``/``local_files_only``, leftovers of how transformers itself was called.
    """
    return {
        "backend": "tokenizers",
        **special_tokens(metadata),
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": TOKENIZER_CLASS,
    }


def write_tokenizer(gguf_path: Path, out_dir: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and (where the file has one)
    ``chat_template.jinja`` for the GGUF at ``gguf_path`` into ``out_dir``.

    Raises :class:`UnsupportedTokenizer` before writing anything if the file's tokenizer is
    not a byte-level BPE this module builds. ``metadata``: from :func:`read_metadata`, if
    the caller has read it already.
    """
    if metadata is None:
        metadata = read_metadata(gguf_path)
    check_supported(metadata, gguf_path.name)
    tokenizer = build_tokenizer(metadata)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = json.dumps(tokenizer_config(metadata), indent=2, sort_keys=True, ensure_ascii=False)
    (out_dir / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        # bytes, so that no newline in the template is translated on the way out
        (out_dir / "chat_template.jinja").write_bytes(template.encode("utf-8"))
