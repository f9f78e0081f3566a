"""charbot eval's scoring: a deliberately wrong answer ranks below a right one, worst first."""

from __future__ import annotations

from pathlib import Path

from engine import Sampling
from tests.fakes import FakeModel
from training.evaluate import Case, Embedder, evaluate_version, write_report

QUESTIONS = [
    Case(
        [{"role": "user", "content": "When do you light the lamp?"}],
        "I light the lighthouse lamp every evening at dusk.",
    ),
    Case(
        [{"role": "user", "content": "What is your cat called?"}],
        "My grey cat is called Fathom.",
    ),
]


async def test_a_wrong_answer_ranks_below_a_right_one_and_the_report_shows_it_first(
    tmp_path: Path,
) -> None:
    # Answers come back in the order asked: a paraphrase of the first reference, then nonsense.
    model = FakeModel(
        [
            "Every evening at dusk I light the lamp of the lighthouse.",
            "Bananas grow in warm places.",
        ]
    )
    result = await evaluate_version(
        model, Embedder(), "Bram", "v0001-test", None, QUESTIONS, [], Sampling(temperature=0)
    )
    right, wrong = result.heldout
    assert right.similarity > 0.7
    assert wrong.similarity < 0.3
    assert result.heldout_similarity is not None
    assert all(r.lora is None for r in model.requests)

    report = write_report([result], "Bram", tmp_path)
    text = report.read_text()
    assert (report.parent / "similarity.png").stat().st_size > 1000
    table = text[text.index("heldout questions, worst first") :]
    assert table.index("Bananas") < table.index("Every evening")  # what it did not learn, first
    assert "| v0001-test |" in text
