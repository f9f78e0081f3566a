"""Judging a version on the fresh sets: asked as the bot would be, answers checked for the
content wanted (training/quality.py's rules), replies to unrelated prompts for leaks."""

from __future__ import annotations

from collections.abc import Sequence

from training.asking import Asker
from training.eval_sets import EvalSets, Probe
from training.evaluate import Embedder, Judged, VersionEval
from training.quality import leaked, recalled, unrelated_figures


async def judge_version(
    asker: Asker,
    embedder: Embedder,
    character: str,
    lora_path: str | None,
    sets: EvalSets,
    result: VersionEval,
) -> VersionEval:
    """Ask the fresh sets (paraphrased, persona, unrelated) as the bot would, with the
    version's LoRA and learnt knowledge, and judge the answers into ``result``."""
    speaking = asker.character(character, lora_path)

    async def judged(probes: Sequence[Probe]) -> list[Judged]:
        _prompts, answers = await asker.ask(speaking, [p.question for p in probes])
        cosines = embedder.similarity(answers, [p.reference for p in probes])
        return [
            Judged(
                p.question,
                p.about,
                p.reference,
                a,
                recalled(a, p.reference, f"{p.question} {p.about}", cos, p.keywords),
            )
            for p, a, cos in zip(probes, answers, cosines, strict=True)
        ]

    result.paraphrased = await judged(sets.paraphrased)
    result.persona = await judged(sets.persona)
    _prompts, replies = await asker.ask(speaking, sets.unrelated)
    result.unrelated = list(zip(sets.unrelated, replies, strict=True))
    result.figures = unrelated_figures(replies, sets.trained)
    for prompt, reply in result.unrelated:
        copied = leaked(reply, dict.fromkeys(sets.trained))
        if copied is not None:
            result.leaks.append((prompt, reply, copied))
    return result


def drift(embedder: Embedder, version: VersionEval, against: VersionEval) -> float | None:
    """How far ``version``'s unrelated replies moved from ``against``'s: 1 - mean cosine."""
    pairs = list(zip(version.unrelated, against.unrelated, strict=False))
    if not pairs:
        return None
    cosines = embedder.similarity([a[1] for a in pairs], [b[1] for b in pairs])
    return 1 - sum(cosines) / len(cosines)
