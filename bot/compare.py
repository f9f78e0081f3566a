"""The online comparison of a canary: is the candidate's 👍 rate better than the current's?

Pure functions over typed records (storage.canaries.Rating and Swipe), so that the CLI, the
studio, the rollout benchmark and the automatic loop judge with the same code:

1. :func:`count_votes` — per version, one vote per (person, reply): the first reaction
   (the store keeps it beside the current value), and at most ``max_votes_per_person_day``
   of one person's votes per UTC day, in the order they were given, so one eager voter (or
   a vote-stuffer with hundreds of reactions) cannot decide alone.
2. :func:`posterior` — each version's 👍 rate θ as Beta(1 + up, 1 + down) (a uniform
   prior); from ``samples`` paired draws (numpy, a fixed seed: the same data gives the same
   figures) P(θ_candidate > θ_current), P(θ_candidate < θ_current) and the expected loss
   of shipping the candidate, E[max(θ_current − θ_candidate, 0)]: how much 👍 rate we
   expect to give up if we ship it and it is in fact worse.
3. :func:`paired_swipes` — a swipe choice between a take of each version (a person kept
   one and swiped the other away) is a head-to-head judgement of the same question. It is
   a different quantity from a 👍 rate, so it is not mixed into the Beta of either version:
   it is counted apart, as Beta(1 + candidate kept, 1 + current kept) of the candidate
   being preferred, and can *block* a promotion (when at least ``min_swipe_pairs`` pairs
   say the current is preferred with the promotion's probability); it never promotes or
   rolls back on its own.
4. :func:`decide` — promote when the candidate has enough ratings from enough people,
   P(better) and the expected loss clear their bars and the swipes do not object; roll
   back when it has enough ratings and P(worse) clears its bar; stop (keep the current)
   after ``max_days``; otherwise continue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bot.config import LoopSettings
from storage.canaries import Rating, Swipe

DAY_S = 86400.0
SEED = 28  # fixed: a comparison is reproducible from its data

DECISIONS = ("promote", "rollback", "continue", "stop")


@dataclass(frozen=True, slots=True)
class Tally:
    """The counted votes on one version's replies."""

    version: str | None
    up: int = 0
    down: int = 0
    people: int = 0  # different people whose votes were counted
    capped: int = 0  # votes left out by the per-person daily cap
    # Each counted person's (👍, 👎): how clustered the votes are (see design_effect).
    per_person: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    @property
    def ratings(self) -> int:
        return self.up + self.down

    @property
    def rate(self) -> float | None:
        return self.up / self.ratings if self.ratings else None


@dataclass(frozen=True, slots=True)
class Posterior:
    """What the Beta posteriors say about candidate against current."""

    p_better: float
    p_worse: float
    expected_loss: float  # of shipping the candidate, in 👍 rate


@dataclass(frozen=True, slots=True)
class Pairs:
    """Swipe choices between a take of each version."""

    candidate_kept: int = 0
    current_kept: int = 0
    p_candidate_preferred: float | None = None  # P(preference > ½); None without pairs

    @property
    def count(self) -> int:
        return self.candidate_kept + self.current_kept


@dataclass(frozen=True, slots=True)
class Comparison:
    """A canary judged: the counts, the posterior, the decision and why."""

    character: str
    current: str | None
    candidate: str
    share: float
    days: float
    current_tally: Tally
    candidate_tally: Tally
    posterior: Posterior
    pairs: Pairs
    decision: str  # one of DECISIONS
    reason: str

    def as_json(self) -> dict[str, object]:
        """The `charbot loras compare --json` object."""
        tallies = {"current": self.current_tally, "candidate": self.candidate_tally}
        return {
            "character": self.character,
            "current": self.current,
            "candidate": self.candidate,
            "share": self.share,
            "days": round(self.days, 3),
            "ratings": {k: t.ratings for k, t in tallies.items()},
            "up": {k: t.up for k, t in tallies.items()},
            "down": {k: t.down for k, t in tallies.items()},
            "people": {k: t.people for k, t in tallies.items()},
            "capped": {k: t.capped for k, t in tallies.items()},
            "p_candidate_better": round(self.posterior.p_better, 4),
            "p_candidate_worse": round(self.posterior.p_worse, 4),
            "expected_loss": round(self.posterior.expected_loss, 5),
            "swipe_pairs": {
                "candidate_kept": self.pairs.candidate_kept,
                "current_kept": self.pairs.current_kept,
                "p_candidate_preferred": self.pairs.p_candidate_preferred,
            },
            "decision": self.decision,
            "reason": self.reason,
        }


def count_votes(
    ratings: Iterable[Rating], versions: Iterable[str | None], max_per_person_day: int
) -> dict[str | None, Tally]:
    """Per version in ``versions``: the first reaction per (person, reply), at most
    ``max_per_person_day`` of a person's votes per UTC day (0: no cap), earliest first."""
    wanted = set(versions)
    seen: set[tuple[int, str, str]] = set()
    per_day: Counter[tuple[str, str, int]] = Counter()
    up: Counter[str | None] = Counter()
    down: Counter[str | None] = Counter()
    capped: Counter[str | None] = Counter()
    people: dict[str | None, set[tuple[str, str]]] = {v: set() for v in wanted}
    mine: dict[tuple[str | None, str, str], tuple[int, int]] = {}
    for rating in sorted(ratings, key=lambda r: (r.at, r.reply_id)):
        if rating.version not in wanted or rating.value not in (1, -1):
            continue
        once = (rating.reply_id, rating.platform, rating.user_id)
        if once in seen:
            continue  # a later reaction of the same person to the same reply
        seen.add(once)
        day = (rating.platform, rating.user_id, int(rating.at // DAY_S))
        if max_per_person_day and per_day[day] >= max_per_person_day:
            capped[rating.version] += 1
            continue
        per_day[day] += 1
        (up if rating.value > 0 else down)[rating.version] += 1
        people[rating.version].add((rating.platform, rating.user_id))
        person = (rating.version, rating.platform, rating.user_id)
        ups, downs = mine.get(person, (0, 0))
        mine[person] = (ups + 1, downs) if rating.value > 0 else (ups, downs + 1)
    return {
        v: Tally(
            v,
            up[v],
            down[v],
            len(people[v]),
            capped[v],
            tuple(sorted(counts for key, counts in mine.items() if key[0] == v)),
        )
        for v in wanted
    }


def person_correlation(*tallies: Tally) -> float:
    """How alike one person's votes are (the intra-class correlation, ρ in [0, 1]), by the
    one-way ANOVA estimator over people, each version around its own rate; 0 with fewer
    than two people on a side."""
    groups = [t.per_person for t in tallies if len(t.per_person) >= 2]
    k = sum(len(g) for g in groups)
    n = sum(u + d for g in groups for u, d in g)
    if len(groups) < len(tallies) or n - k <= 0 or k - len(groups) <= 0:
        return 0.0
    between = within = sizes = 0.0
    for group in groups:
        total = sum(u + d for u, d in group)
        rate = sum(u for u, _ in group) / total
        between += sum((u + d) * ((u / (u + d)) - rate) ** 2 for u, d in group)
        within += sum(u * d / (u + d) for u, d in group)
        sizes += sum((u + d) ** 2 for u, d in group) / total
    msb = between / (k - len(groups))
    msw = within / (n - k)
    m0 = (n - sizes) / (k - len(groups))
    if msb + (m0 - 1) * msw <= 0:
        return 0.0
    return min(max((msb - msw) / (msb + (m0 - 1) * msw), 0.0), 1.0)


def design_effect(tally: Tally, rho: float) -> float:
    """How many of this side's votes are worth one independent vote: 1 + (m̄ − 1)·ρ, with
    m̄ the vote-weighted mean of the votes per person (Kish)."""
    if not tally.ratings or rho <= 0:
        return 1.0
    mean = sum((u + d) ** 2 for u, d in tally.per_person) / tally.ratings
    return 1.0 + max(mean - 1.0, 0.0) * rho


def posterior(
    current: Tally,
    candidate: Tally,
    samples: int = 20000,
    seed: int = SEED,
    per_person: bool = False,
) -> Posterior:
    """P(better), P(worse) and the expected loss of shipping ``candidate``, by sampling the
    two Beta(1 + up, 1 + down) posteriors. ``per_person``: each side's counts are first
    divided by its design effect — one person's votes are alike (a generous person stays
    generous), so they say less than as many votes of different people."""
    rho = person_correlation(current, candidate) if per_person else 0.0
    theirs_deff, ours_deff = design_effect(current, rho), design_effect(candidate, rho)
    rng = np.random.default_rng(seed)
    theirs = rng.beta(1 + current.up / theirs_deff, 1 + current.down / theirs_deff, samples)
    ours = rng.beta(1 + candidate.up / ours_deff, 1 + candidate.down / ours_deff, samples)
    return Posterior(
        p_better=float(np.mean(ours > theirs)),
        p_worse=float(np.mean(ours < theirs)),
        expected_loss=float(np.mean(np.maximum(theirs - ours, 0.0))),
    )


def paired_swipes(
    swipes: Iterable[Swipe],
    current: str | None,
    candidate: str,
    samples: int = 20000,
    seed: int = SEED,
) -> Pairs:
    """Swipe choices where a take of one version was kept over a take of the other; one
    per choice (a choice among several takes of each counts once)."""
    ours = theirs = 0
    for swipe in swipes:
        if swipe.kept == candidate and current in swipe.others:
            ours += 1
        elif swipe.kept == current and candidate in swipe.others:
            theirs += 1
    if not ours + theirs:
        return Pairs()
    draws = np.random.default_rng(seed).beta(1 + ours, 1 + theirs, samples)
    return Pairs(ours, theirs, float(np.mean(draws > 0.5)))


def decide(
    candidate: Tally, post: Posterior, pairs: Pairs, days: float, loop: LoopSettings
) -> tuple[str, str]:
    """(decision, why) by [loop]'s rule."""
    if candidate.ratings >= loop.rollback_min_ratings and post.p_worse >= loop.rollback_probability:
        return "rollback", (
            f"P(candidate worse) = {post.p_worse:.3f} ≥ {loop.rollback_probability} "
            f"after {candidate.ratings} ratings"
        )
    ready = (
        candidate.ratings >= loop.promote_min_ratings
        and candidate.people >= loop.promote_min_people
        and post.p_better >= loop.promote_probability
        and post.expected_loss <= loop.promote_max_loss
    )
    objection = (
        pairs.count >= loop.min_swipe_pairs
        and pairs.p_candidate_preferred is not None
        and pairs.p_candidate_preferred <= 1 - loop.promote_probability
    )
    if ready and not objection:
        return "promote", (
            f"P(candidate better) = {post.p_better:.3f}, expected loss "
            f"{post.expected_loss:.4f}, {candidate.ratings} ratings from {candidate.people} people"
        )
    if days >= loop.max_days:
        return (
            "stop",
            f"no decision after {days:.1f} days (max_days {loop.max_days:g}): keep the current",
        )
    if ready:
        return "continue", (
            f"the ratings favour the candidate but {pairs.current_kept} of {pairs.count} swipe "
            "choices kept the current version's take"
        )
    return "continue", _missing(candidate, post, loop)


def _missing(candidate: Tally, post: Posterior, loop: LoopSettings) -> str:
    needs = []
    if candidate.ratings < loop.promote_min_ratings:
        needs.append(f"{candidate.ratings}/{loop.promote_min_ratings} ratings")
    if candidate.people < loop.promote_min_people:
        needs.append(f"{candidate.people}/{loop.promote_min_people} people")
    if post.p_better < loop.promote_probability:
        needs.append(f"P(better) {post.p_better:.3f} < {loop.promote_probability}")
    if post.expected_loss > loop.promote_max_loss:
        needs.append(f"expected loss {post.expected_loss:.4f} > {loop.promote_max_loss}")
    return "waiting: " + ", ".join(needs)


def compare(
    character: str,
    current: str | None,
    candidate: str,
    share: float,
    days: float,
    ratings: Iterable[Rating],
    swipes: Iterable[Swipe],
    loop: LoopSettings,
) -> Comparison:
    """Judge a canary of ``candidate`` against ``current`` that has run for ``days``."""
    tallies = count_votes(ratings, (current, candidate), loop.max_votes_per_person_day)
    theirs, ours = tallies[current], tallies[candidate]
    post = posterior(theirs, ours, loop.samples, per_person=loop.per_person)
    pairs = paired_swipes(swipes, current, candidate, loop.samples)
    decision, reason = decide(ours, post, pairs, days, loop)
    return Comparison(
        character, current, candidate, share, days, theirs, ours, post, pairs, decision, reason
    )
