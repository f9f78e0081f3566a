"""Canary rollouts in a simulated community, judged by the real decision code.

Simulated people with known 👍 rates talk to a character for up to ``--days`` days; a sticky
share of them (``bot.canary.meets_candidate``, the bot's own assignment) meets the candidate.
Their votes become the records the store gives the comparison (``storage.canaries.Rating``),
and at the end of each day ``bot.compare.compare`` — the code behind `charbot loras
compare` — decides with [loop]'s defaults; an experiment ends at promote, rollback or stop.

The community (a 50-person server or group, stated as assumed, not measured):

- ``--people`` 50 people. Activity is heavy-tailed: a person's mean replies a day is
  log-normal (median 2, a few over 20), each day Poisson around it: about 160 replies a day.
- Most vote rarely: each person's chance to rate a reply is Beta(0.5, 3) (mean 14%, median
  6%; one in ten rates more than 40% of what they get): about 20 votes a day in all.
- People differ in taste: a person's 👍 chance is the version's rate plus their own offset,
  N(0, 0.1), fixed per person — so the two sides of a canary differ a little by who is in
  them, as they would in a real community (the Beta model does not know this).
- The current version's 👍 rate is 0.6; the candidate is equal (0.6), 10 points better
  (0.7) or 10 points worse (0.5).

Printed per case: how the experiments ended (promote / rollback / stop after max_days /
still running at the horizon), the median days and the candidate's counted ratings at a
decision. Beside it, from the same simulated votes, the baseline: today's practice of
reading `stats --by-version` once the candidate has 100 ratings — ship it when its raw 👍
rate is higher, else roll back. Targets (issue 28): equal → false promotions ≤ 5%;
better → promoted ≥ 80% within 30 days; worse → rolled back ≥ 90%.

    .venv/bin/python benchmarks/rollout.py [--experiments 200] [--share 0.5] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.canary import meets_candidate
from bot.compare import compare
from bot.config import LoopSettings
from storage.canaries import Rating

DAY_S = 86400.0
CURRENT, CANDIDATE = "v0001-current", "v0002-candidate"
BASE_RATE = 0.6
CASES = (("equal", 0.0), ("10 points better", 0.10), ("10 points worse", -0.10))


@dataclass(frozen=True, slots=True)
class Person:
    """One simulated person: where they are, how much they talk and vote, their taste."""

    user_id: str
    candidate: bool
    replies_a_day: float
    vote_chance: float
    offset: float


@dataclass(slots=True)
class Outcome:
    decision: str  # promote | rollback | stop | running (no decision by the horizon)
    day: int
    ratings: int  # the candidate's counted ratings at the decision
    naive: str  # the baseline's decision: promote | rollback | none (never 100 ratings)


def community(
    rng: np.random.Generator,
    experiment: int,
    people: int,
    share: float,
    taste: float,
    traffic: float = 1.0,
) -> list[Person]:
    found = []
    for i in range(people):
        user = f"e{experiment}-p{i}"
        found.append(
            Person(
                user,
                meets_candidate("discord", user, "Aria", share),
                traffic * float(rng.lognormal(np.log(2.0), 1.0)),
                float(rng.beta(0.5, 3.0)),
                float(rng.normal(0.0, taste)),
            )
        )
    return found


def one_day(
    rng: np.random.Generator, people: list[Person], day: int, delta: float, ids: Iterator[int]
) -> list[Rating]:
    votes = []
    for person in people:
        rate = BASE_RATE + (delta if person.candidate else 0.0)
        liked = min(max(rate + person.offset, 0.02), 0.98)
        version = CANDIDATE if person.candidate else CURRENT
        for _ in range(int(rng.poisson(person.replies_a_day))):
            reply = next(ids)
            if rng.random() < person.vote_chance:
                value = 1 if rng.random() < liked else -1
                at = day * DAY_S + float(rng.uniform(0, DAY_S))
                votes.append(Rating(reply, version, "discord", person.user_id, value, at))
    return votes


def naive(votes: list[Rating]) -> str | None:
    """Raw 👍 rates once the candidate has 100 votes (no cap, no posterior)."""
    mine = [v for v in votes if v.version == CANDIDATE]
    if len(mine) < 100:
        return None
    theirs = [v for v in votes if v.version == CURRENT]
    rate = sum(v.value > 0 for v in mine) / len(mine)
    other = sum(v.value > 0 for v in theirs) / max(len(theirs), 1)
    return "promote" if rate > other else "rollback"


def experiment(
    index: int, delta: float, args: argparse.Namespace, loop: LoopSettings, seed: int
) -> Outcome:
    rng = np.random.default_rng([seed, index])
    people = community(rng, index, args.people, args.share, args.taste, args.traffic)
    votes: list[Rating] = []
    naive_call = None
    ids = itertools.count(1)
    for day in range(args.days):
        votes += one_day(rng, people, day, delta, ids)
        if naive_call is None:
            naive_call = naive(votes)
        result = compare("Aria", CURRENT, CANDIDATE, args.share, day + 1, votes, [], loop)
        if result.decision != "continue":
            return Outcome(
                result.decision, day + 1, result.candidate_tally.ratings, naive_call or "none"
            )
    return Outcome("running", args.days, result.candidate_tally.ratings, naive_call or "none")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=200, help="per case (200)")
    parser.add_argument("--people", type=int, default=50, help="the community's size (50)")
    parser.add_argument("--share", type=float, default=0.5, help="the canary's share (0.5)")
    parser.add_argument("--days", type=int, default=30, help="the horizon (30)")
    parser.add_argument(
        "--taste", type=float, default=0.1, help="std of a person's own 👍 offset (0.1)"
    )
    parser.add_argument(
        "--traffic", type=float, default=1.0, help="multiply everyone's replies a day (1)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [loop] setting, e.g. --set promote_probability=0.99",
    )
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--quick", action="store_true", help="20 experiments, fewer draws")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    loop = LoopSettings()
    for item in args.set:
        key, _, value = item.partition("=")
        kind = type(getattr(loop, key))
        # bool("false") is True: a flag is read as a word.
        parsed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        loop = dataclasses.replace(loop, **{key: parsed})
    if args.quick:
        args.experiments = 20
        loop = dataclasses.replace(loop, samples=4000)
    started = time.perf_counter()
    print(
        f"{args.people} people (taste std {args.taste:g}, traffic ×{args.traffic:g}), share "
        f"{args.share:g}, {args.experiments} experiments per case, "
        f"decided daily for up to {args.days} days by [loop] defaults "
        f"(promote: ≥{loop.promote_min_ratings} ratings from ≥{loop.promote_min_people} people, "
        f"P(better) ≥ {loop.promote_probability}, loss ≤ {loop.promote_max_loss}; rollback: "
        f"≥{loop.rollback_min_ratings} ratings, P(worse) ≥ {loop.rollback_probability}; stop "
        f"after {loop.max_days:g} days; cap {loop.max_votes_per_person_day} votes/person/day)"
    )
    header = (
        f"{'case':<18} {'promote':>8} {'rollback':>9} {'stop':>7} {'running':>8} "
        f"{'median days':>12} {'median ratings':>15} | {'baseline: promote':>18} {'rollback':>9}"
    )
    print(header)
    figures = {}
    for name, delta in CASES:
        outcomes = [experiment(i, delta, args, loop, args.seed) for i in range(args.experiments)]
        count = {
            k: sum(o.decision == k for o in outcomes)
            for k in ("promote", "rollback", "stop", "running")
        }
        decided = [o for o in outcomes if o.decision in ("promote", "rollback")]
        days = statistics.median(o.day for o in decided) if decided else None
        ratings = statistics.median(o.ratings for o in decided) if decided else None
        naive_count = {k: sum(o.naive == k for o in outcomes) for k in ("promote", "rollback")}
        n = len(outcomes)
        print(
            f"{name:<18} {_pct(count['promote'], n):>8} {_pct(count['rollback'], n):>9} "
            f"{_pct(count['stop'], n):>7} {_pct(count['running'], n):>8} "
            f"{_num(days):>12} {_num(ratings):>15} | "
            f"{_pct(naive_count['promote'], n):>18} {_pct(naive_count['rollback'], n):>9}"
        )
        figures[name] = {
            **{k: v / n for k, v in count.items()},
            "median_days_to_decision": days,
            "median_candidate_ratings_to_decision": ratings,
            "baseline_promote": naive_count["promote"] / n,
            "baseline_rollback": naive_count["rollback"] / n,
        }
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "cases": figures},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
