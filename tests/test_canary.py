"""Canaries: sticky assignment across processes, the counting rules of the comparison, its
posterior against a direct Beta computation, and a canary reaching a running bot."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from bot.canary import bucket, meets_candidate
from bot.compare import (
    Pairs,
    Posterior,
    Tally,
    compare,
    count_votes,
    decide,
    design_effect,
    person_correlation,
    posterior,
)
from bot.config import LoopSettings
from bot.core import Core
from bot.loras import BaseIdentity, LoraSwitcher
from bot.messages import Inbound
from storage import canaries, lora_choices
from storage.canaries import Rating, Swipe
from storage.store import Store
from tests.fakes import RecordingTarget
from tests.test_versions import VersionedFake, _config, fake_run, metadata
from training.versions import publish

PEOPLE = [f"user{i}" for i in range(200)]


# -- sticky assignment -----------------------------------------------------------------------


def _sides_in_a_new_process(share: float) -> list[bool]:
    code = (
        "import json, sys\n"
        "from bot.canary import meets_candidate\n"
        f"print(json.dumps([meets_candidate('discord', u, 'Aria', {share}) for u in {PEOPLE!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        # A different hash seed in each: Python's hash() would put people on other sides.
        env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"},
    ).stdout
    return json.loads(out)


def test_a_person_meets_the_same_version_in_every_process_and_restart() -> None:
    here = [meets_candidate("discord", u, "Aria", 0.2) for u in PEOPLE]
    first, second = _sides_in_a_new_process(0.2), _sides_in_a_new_process(0.2)
    assert first == second == here
    assert 20 <= sum(here) <= 60  # about a fifth of 200 people
    # Another character or platform is another draw, so one person is not always the canary.
    assert here != [meets_candidate("telegram", u, "Aria", 0.2) for u in PEOPLE]
    assert here != [meets_candidate("discord", u, "Bram", 0.2) for u in PEOPLE]
    assert bucket("discord", "user1", "Aria") == bucket("discord", "user1", "aria")
    # A larger share only adds people: nobody who met the candidate goes back.
    wider = [meets_candidate("discord", u, "Aria", 0.5) for u in PEOPLE]
    assert all(w for h, w in zip(here, wider, strict=True) if h) and sum(wider) > sum(here)
    assert not meets_candidate("discord", "", "Aria", 0.99)  # nobody known: the current


# -- counting --------------------------------------------------------------------------------

DAY = 86400.0


def _r(reply: int, user: str, value: int, at: float, version: str | None = "v2") -> Rating:
    return Rating(reply, version, "discord", user, value, at)


def test_only_the_first_reaction_per_person_and_reply_counts() -> None:
    table = [
        _r(1, "ann", -1, 10.0),
        _r(1, "ann", 1, 20.0),  # changed her mind later: the first reaction stands
        _r(1, "bob", 1, 15.0),
        _r(2, "ann", 1, 30.0),
        _r(3, "cid", 1, 5.0, version="v1"),
        _r(4, "cid", 1, 6.0, version="v9"),  # another version: not in this comparison
    ]
    tallies = count_votes(table, ("v1", "v2"), max_per_person_day=20)
    assert tallies["v2"] == Tally("v2", up=2, down=1, people=2, capped=0)
    assert tallies["v1"] == Tally("v1", up=1, down=0, people=1, capped=0)


def test_each_persons_votes_are_capped_per_day() -> None:
    stuffer = [_r(i, "eve", 1, 100.0 + i) for i in range(300)]  # hundreds of 👍 in one day
    next_day = [_r(1000 + i, "eve", 1, DAY + 100.0 + i) for i in range(5)]
    others = [_r(2000 + i, f"p{i}", -1, 50.0) for i in range(8)]
    tallies = count_votes([*stuffer, *next_day, *others], ("v1", "v2"), max_per_person_day=20)
    v2 = tallies["v2"]
    assert (v2.up, v2.down, v2.capped, v2.people) == (20 + 5, 8, 280, 9)
    # The earliest votes of the day are the ones counted, whatever order the table has.
    reversed_table = list(reversed([*stuffer, *next_day, *others]))
    assert count_votes(reversed_table, ("v1", "v2"), 20)["v2"] == v2
    assert count_votes(stuffer, ("v2",), 0)["v2"].up == 300  # 0: no cap


async def test_the_store_keeps_the_first_reaction_for_the_comparison(make_core) -> None:
    core = await make_core(model=VersionedFake())
    await core.handle(_inbound("ann", "hello"), RecordingTarget())
    (reply,) = [m for m in await core.store.list_messages() if m.role == "assistant"]
    canary = await canaries.start_canary(core.store, "Aria", "v2", "/x", 0.5, None, "test")
    await core.store.set_vote(reply.id, "bob", -1)
    await core.store.set_vote(reply.id, "bob", 1)  # a change: the export sees +1 ...
    assert [v.value for v in await core.store.list_votes()] == [1]
    evidence = await canaries.canary_evidence(core.store, canary)
    assert [(r.user_id, r.value) for r in evidence.ratings] == []  # written before the canary
    old = canaries.Canary(**{**canaries._as_dict(canary), "started_at": 0.0})
    evidence = await canaries.canary_evidence(core.store, old)
    assert [(r.user_id, r.value, r.version) for r in evidence.ratings] == [("bob", -1, None)]


# -- the posterior and the decision ----------------------------------------------------------


def _direct(current: Tally, candidate: Tally) -> tuple[float, float]:
    """P(candidate better) and E[max(current - candidate, 0)] by numerical integration."""
    a = stats.beta(1 + current.up, 1 + current.down)
    b = stats.beta(1 + candidate.up, 1 + candidate.down)
    p_better, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), 0, 1, limit=200)
    # E[max(A - B, 0)] = ∫ P(A - B > t) dt = ∫∫_{a > b} (a - b) f_A(a) f_B(b)
    loss, _ = integrate.dblquad(
        lambda y, x: (x - y) * a.pdf(x) * b.pdf(y), 0, 1, lambda x: 0.0, lambda x: x
    )
    return p_better, loss


@pytest.mark.parametrize(
    ("current", "candidate"),
    [((60, 40), (75, 25)), ((30, 30), (28, 32)), ((120, 80), (70, 30))],
)
def test_the_posterior_matches_a_direct_beta_computation(
    current: tuple[int, int], candidate: tuple[int, int]
) -> None:
    theirs, ours = Tally("v1", *current), Tally("v2", *candidate)
    got = posterior(theirs, ours, samples=200_000)
    p_better, loss = _direct(theirs, ours)
    # 200,000 draws: a standard error of at most ~0.0011 on a probability.
    assert got.p_better == pytest.approx(p_better, abs=0.005)
    assert got.p_worse == pytest.approx(1 - p_better, abs=0.005)
    assert got.expected_loss == pytest.approx(loss, abs=0.0005)
    assert posterior(theirs, ours, samples=1000) == posterior(theirs, ours, samples=1000)


def test_the_decision_rule_on_fixed_data() -> None:
    loop = LoopSettings(per_person=False)  # the plain Beta of every counted vote
    # 150 ratings from 12 people at 80% against 60%: clearly better.
    table = [_r(i, f"p{i % 12}", 1 if i % 5 else -1, i * 60.0) for i in range(150)]
    table += [
        _r(1000 + i, f"q{i % 30}", 1 if i % 5 < 3 else -1, i * 60.0, "v1") for i in range(300)
    ]
    result = compare("Aria", "v1", "v2", 0.2, 3.0, table, [], loop)
    p_better, loss = _direct(result.current_tally, result.candidate_tally)
    assert result.decision == "promote", result.reason
    assert (p_better >= 0.95, loss <= 0.005) == (True, True)
    assert result.as_json()["ratings"] == {"current": 300, "candidate": 150}
    # The same figures from too few people wait for more.
    few = [_r(i, f"p{i % 5}", 1 if i % 5 else -1, i * 600.0) for i in range(100)]
    waiting = compare("Aria", "v1", "v2", 0.2, 3.0, [*few, *table[150:]], [], loop)
    assert waiting.decision == "continue" and "5/10 people" in waiting.reason
    # Clearly worse after 40 ratings: roll back.
    worse = [_r(i, f"p{i % 12}", 1 if i % 4 == 0 else -1, i * 60.0) for i in range(40)]
    assert compare("Aria", "v1", "v2", 0.2, 1.0, [*worse, *table[150:]], [], loop).decision == (
        "rollback"
    )
    # Nothing clear after 14 days: stop and keep the current.
    even = [_r(i, f"p{i % 12}", 1 if i % 5 < 3 else -1, i * 60.0) for i in range(60)]
    assert compare("Aria", "v1", "v2", 0.2, 14.0, [*even, *table[150:]], [], loop).decision == (
        "stop"
    )


def test_votes_of_one_person_count_for_less_when_people_differ() -> None:
    # Everyone votes alike (each person 3 of 4 👍): nothing to correct.
    alike = Tally("v1", 30, 10, 10, per_person=((3, 1),) * 10)
    assert person_correlation(alike, alike) == 0.0
    # Each person always votes the same way: ten votes of one person are one opinion.
    stubborn = Tally("v2", 60, 40, 10, per_person=((10, 0),) * 6 + ((0, 10),) * 4)
    rho = person_correlation(stubborn, stubborn)
    assert rho == pytest.approx(1.0)
    assert design_effect(stubborn, rho) == pytest.approx(10.0)
    plain = posterior(alike, stubborn, samples=50_000)
    corrected = posterior(alike, stubborn, samples=50_000, per_person=True)
    # 60% against 75%: worse either way, but ten stubborn people are less sure than 100 votes.
    assert 0.5 < corrected.p_worse < plain.p_worse
    assert posterior(alike, alike, per_person=True) == posterior(alike, alike)


def test_swipes_between_the_versions_takes_can_block_a_promotion() -> None:
    loop = LoopSettings()
    ready = Tally("v2", up=120, down=30, people=12)
    post = Posterior(p_better=0.99, p_worse=0.01, expected_loss=0.001)
    assert decide(ready, post, Pairs(), 2.0, loop)[0] == "promote"
    against = Pairs(candidate_kept=1, current_kept=11, p_candidate_preferred=0.003)
    decision, reason = decide(ready, post, against, 2.0, loop)
    assert decision == "continue" and "11 of 12 swipe choices" in reason
    swipes = [Swipe("discord", f"p{i}", "v1", ("v2",), 1.0) for i in range(11)]
    swipes += [
        Swipe("discord", "z", "v2", ("v1", "v1"), 1.0),
        Swipe("discord", "y", "v2", ("v9",), 1.0),
    ]
    table = [_r(i, f"p{i % 12}", 1 if i % 5 else -1, i * 60.0) for i in range(150)]
    table += [
        _r(1000 + i, f"q{i % 30}", 1 if i % 5 < 3 else -1, i * 60.0, "v1") for i in range(300)
    ]
    result = compare("Aria", "v1", "v2", 0.2, 3.0, table, swipes, loop)
    assert (result.pairs.candidate_kept, result.pairs.current_kept) == (1, 11)
    assert result.decision == "continue"


# -- a running bot ---------------------------------------------------------------------------

_ids = iter(range(1, 10**6))


def _inbound(user: str, text: str) -> Inbound:
    return Inbound(
        platform="test",
        chat_id=f"chat-{user}",
        message_id=f"u{next(_ids)}",
        author_id=user,
        author_name=user,
        text=f"Aria, {text}",
        addressed=True,
    )


async def _wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_canary_reaches_a_running_bot_and_replies_split_by_person(
    make_core, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras, weights=b"1"), loras, metadata())
    v2 = publish(fake_run(loras, weights=b"2"), loras, metadata())
    model = VersionedFake()
    core: Core = await make_core(model=model)
    switcher = LoraSwitcher(core, core.store, loras, BaseIdentity("tiny", "abc"), poll_seconds=0.05)
    await switcher.start()
    try:
        other = await Store.open(db_url)  # the CLI in another process
        await lora_choices.record_choice(other, "Aria", v1.id, str(v1.path), "cli")
        await canaries.start_canary(other, "Aria", v2.id, str(v2.path), 0.5, v1.id, "cli")
        await _wait_for(lambda: core.canaries.get("Aria") is not None, "the canary")
        people = [f"user{i}" for i in range(16)]
        for person in people:
            await core.handle(_inbound(person, "hello"), RecordingTarget())
        replies = [m for m in await core.store.list_messages() if m.role == "assistant"]
        # Each person speaks in a chat of their own ("chat-<user>").
        by_person = {m.chat_id.removeprefix("chat-"): m.lora_version for m in replies}
        expected = {p: v2.id if meets_candidate("test", p, "Aria", 0.5) else v1.id for p in people}
        assert by_person == expected
        assert set(expected.values()) == {v1.id, v2.id}  # both sides are met
        # The candidate's rows go to its own slot, the others to the character's.
        assert {r.lora.name for r in model.requests} == {"Aria", "Aria#canary"}

        # Its files vanish: one logged line, everyone meets the current version.
        caplog.set_level(logging.WARNING, logger="bot.canary_follow")
        shutil.rmtree(v2.path)
        await _wait_for(lambda: core.canaries.get("Aria") is None, "the fallback")
        gone = [r for r in caplog.records if "is gone" in r.getMessage()]
        assert len(gone) == 1
        await asyncio.sleep(0.2)  # more polls: still one line, not one per poll
        assert len([r for r in caplog.records if "is gone" in r.getMessage()]) == 1
        before = len(model.requests)
        for person in people:
            await core.handle(_inbound(person, "again"), RecordingTarget())
        assert {r.lora.path for r in model.requests[before:]} == {str(v1.path)}

        # A new canary (the files back) is applied again; stopped, the bot follows.
        v3 = publish(fake_run(loras, weights=b"3"), loras, metadata())
        await canaries.start_canary(other, "Aria", v3.id, str(v3.path), 0.5, v1.id, "cli")
        await _wait_for(lambda: core.canaries.get("Aria") is not None, "the new canary")
        assert model.loras["Aria#canary"] == str(v3.path)
        await canaries.end_canary(other, "Aria", "stopped", "cli")
        await _wait_for(lambda: core.canaries.get("Aria") is None, "the stop")
        assert "Aria#canary" not in model.loras and model.loras["Aria"] == str(v1.path)
        await other.close()
    finally:
        await switcher.close()


async def test_the_cli_starts_judges_promotes_and_refuses_bad_input(
    make_core, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charbot.cli import main

    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras, weights=b"1"), loras, metadata(base="smollm2", fingerprint=""))
    v2 = publish(fake_run(loras, weights=b"2"), loras, metadata(base="smollm2", fingerprint=""))
    config = str(_config(tmp_path, db_url))
    core = await make_core(model=VersionedFake())
    capsys.readouterr()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", config])
        out, err = capsys.readouterr()
        return code, out, err

    for argv, message in (
        (("try", "Aria", "v2", "--share", "1.5"), "--share 1.5: a canary's share lies between"),
        (("try", "Aria", "v2", "--share", "0"), "--share 0: a canary's share lies between"),
        (("try", "Nobody", "v2"), "unknown character"),
        (("try", "Aria", "v7"), "no LoRA version 'v7'"),
        (("compare", "Aria"), "Aria has no canary running"),
        (("promote", "Aria"), "Aria has no canary running"),
    ):
        code, _, err = await asyncio.to_thread(run, "loras", *argv)
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert await canaries.live_canaries(core.store) == {}

    code, out, _ = await asyncio.to_thread(run, "loras", "use", "Aria", "v1")
    code, out, _ = await asyncio.to_thread(run, "loras", "try", "aria", "v2", "--share", "0.3")
    assert code == 0 and f"30% of people now meet {v2.id}, everyone else {v1.id}" in out
    code, _, err = await asyncio.to_thread(run, "loras", "try", "Aria", "v1")
    assert code == 2 and f"Aria already speaks with {v1.id}" in err  # the current: refused

    code, out, _ = await asyncio.to_thread(run, "loras", "compare", "Aria", "--json")
    report = json.loads(out)
    assert code == 0 and report["current"] == v1.id and report["candidate"] == v2.id
    assert report["ratings"] == {"current": 0, "candidate": 0}
    assert report["people"] == {"current": 0, "candidate": 0}
    assert report["decision"] == "continue" and 0 <= report["p_candidate_better"] <= 1
    assert "expected_loss" in report
    code, out, _ = await asyncio.to_thread(run, "loras", "compare", "Aria")
    assert code == 0 and "decision: continue" in out

    code, out, _ = await asyncio.to_thread(run, "loras", "promote", "Aria")
    assert code == 0 and f"Aria now speaks with {v2.id} for everyone" in out
    assert (await lora_choices.current_choices(core.store))["aria"].version == v2.id
    (ended,) = await canaries.history(core.store, "Aria")
    assert ended.outcome == "promoted" and ended.ended_at is not None

    # While a canary runs, rollback ends it and keeps the current; then the old meaning.
    await asyncio.to_thread(run, "loras", "try", "Aria", "v1")
    code, out, _ = await asyncio.to_thread(run, "loras", "rollback", "Aria")
    assert code == 0 and f"the canary of {v1.id} is rolled back; everyone meets {v2.id}" in out
    assert (await lora_choices.current_choices(core.store))["aria"].version == v2.id
    code, out, _ = await asyncio.to_thread(run, "loras", "rollback", "Aria")
    assert code == 0 and f"Aria now speaks with {v1.id}" in out
    await asyncio.to_thread(run, "loras", "try", "Aria", "v2")
    code, out, _ = await asyncio.to_thread(run, "loras", "stop", "Aria")
    assert code == 0 and "is stopped" in out
    assert await canaries.live_canaries(core.store) == {}
    assert np.isfinite(report["expected_loss"])
