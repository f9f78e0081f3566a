"""The gate: a version that is worse than the one in use, on what users feel, is not
switched to unless asked to with ``--force``.

Compared on the figures of one evaluation that asked both versions the same sets (the
candidate's ``evaluation`` and its ``baseline``): the leak rate may rise, the distinct-reply
rate and the persona score may fall, each by at most its configured margin.
"""

from __future__ import annotations

from typing import Any

from bot.config import TrainingSettings

FORCE = "--force"


def refusal(evaluation: dict[str, Any] | None, settings: TrainingSettings) -> str | None:
    """The one line saying why the evaluated version is worse, or None to let it through."""
    if not evaluation or not evaluation.get("baseline"):
        return None
    now = evaluation["baseline"]
    against = evaluation.get("against") or "the version in use"
    checks = (
        ("leak rate", "leak_rate", +1, settings.max_leak_increase, "max_leak_increase"),
        ("distinct replies", "distinct_rate", -1, settings.max_distinct_drop, "max_distinct_drop"),
        ("persona facts", "persona_score", -1, settings.max_persona_drop, "max_persona_drop"),
    )
    for label, key, worse, margin, setting in checks:
        new, old = evaluation.get(key), now.get(key)
        if new is None or old is None:
            continue
        if (new - old) * worse > margin + 1e-9:
            return (
                f"{evaluation.get('version', 'the new version')}: {label} {new:.0%} against "
                f"{old:.0%} for {against} (allowed {'+' if worse > 0 else '-'}{margin:.0%}, "
                f"[training] {setting}); pass {FORCE} to switch anyway"
            )
    return None


def gate_record(evaluation: dict[str, Any] | None, settings: TrainingSettings) -> dict[str, Any]:
    """What the metadata keeps of the gate's decision."""
    failed = refusal(evaluation, settings)
    return {"passed": failed is None, "failed": failed}
