"""A version's evaluation figures as the studio shows them: read from the ``evaluation`` key
of its metadata.json, each beside the compared version's figure (``baseline``) when there is one.

Every key is optional and may be null (old versions hold only the similarities), so a
figure is present only when its value is a number; the page shows "–" for the rest. The
list of figures, their format and which way is better is defined here once, for the
Characters table and the Reports chart alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """One figure of the evaluation: its metadata key, how it reads and which way is better."""

    key: str
    label: str
    percent: bool  # a share 0–1 shown as "83%"; otherwise a number shown as "0.470"
    higher_is_better: bool = True
    count: str | None = None  # the key holding how many questions or prompts it is over
    unit: str = "questions"

    def text(self, value: float) -> str:
        return f"{value * 100:.0f}%" if self.percent else f"{value:.3f}"


HELDOUT = Kind("heldout_similarity", "held-out similarity", False, count="heldout_questions")
CORRECTED = Kind("corrected_similarity", "corrected similarity", False, count="corrected_questions")
PARAPHRASE = Kind("paraphrase_recall", "paraphrase recall", True, count="paraphrase_questions")
LEAK = Kind("leak_rate", "leak rate", True, False, count="unrelated_prompts", unit="prompts")
DISTINCT = Kind("distinct_rate", "distinct rate", True, count="unrelated_prompts", unit="prompts")
PERSONA = Kind("persona_score", "persona score", True, count="persona_questions")
# Shown in the distinct rate's tooltip, not as columns of their own.
DISTINCT_2 = Kind("distinct_2", "distinct bigrams", True)
DRIFT = Kind("drift", "drift", False)
MEAN_WORDS = Kind("mean_words", "mean words", False)

# The Characters table's figure columns after the held-out similarity, and the Reports
# chart's lines.
FIGURES = (PARAPHRASE, LEAK, DISTINCT, PERSONA)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool, a string or null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Figure:
    """One figure of one version, with the compared version's when the evaluation has it."""

    kind: Kind
    value: float | None
    was: float | None = None
    count: float | None = None
    note: str = ""  # more of the evaluation, for the tooltip

    @property
    def text(self) -> str:
        return "–" if self.value is None else self.kind.text(self.value)

    @property
    def was_text(self) -> str | None:
        return None if self.was is None else self.kind.text(self.was)

    @property
    def change(self) -> str | None:
        """ "better", "worse" or "same" against the compared version, as shown (rounded)."""
        if self.value is None or self.was is None:
            return None
        if self.text == self.was_text:
            return "same"
        up = self.value > self.was
        return "better" if up == self.kind.higher_is_better else "worse"

    @property
    def arrow(self) -> str:
        if self.value is None or self.was is None or self.change == "same":
            return "="
        return "▲" if self.value > self.was else "▼"

    @property
    def title(self) -> str:
        """The tooltip: the label, what it is over and which way is better."""
        parts = [self.kind.label]
        if self.count is not None:
            parts.append(f"over {self.count:.0f} {self.kind.unit}")
        parts.append("higher is better" if self.kind.higher_is_better else "lower is better")
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Gate:
    passed: bool
    failed: str | None


@dataclass(frozen=True)
class Evaluation:
    """The evaluation key of one version's metadata, read leniently."""

    raw: dict[str, Any]

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> Evaluation:
        return cls(_dict(metadata.get("evaluation")))

    @property
    def baseline(self) -> dict[str, Any]:
        return _dict(self.raw.get("baseline"))

    @property
    def against(self) -> str | None:
        found = self.raw.get("against")
        return str(found) if found else None

    def figure(self, kind: Kind) -> Figure:
        count = number(self.raw.get(kind.count)) if kind.count else None
        value, was = number(self.raw.get(kind.key)), number(self.baseline.get(kind.key))
        return Figure(kind, value, was, count, self.extras if kind is DISTINCT else "")

    def value(self, kind: Kind) -> float | None:
        return number(self.raw.get(kind.key))

    @property
    def gate(self) -> Gate | None:
        gate = self.raw.get("gate")
        if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
            return None
        failed = gate.get("failed")
        return Gate(gate["passed"], str(failed) if failed else None)

    @property
    def extras(self) -> str:
        """The figures without a column of their own, for the distinct rate's tooltip."""
        parts = []
        for kind in (DISTINCT_2, MEAN_WORDS, DRIFT):
            value = self.value(kind)
            if value is not None:
                shown = f"{value:.1f}" if kind is MEAN_WORDS else kind.text(value)
                parts.append(f"{kind.label} {shown}")
        return "; ".join(parts)
