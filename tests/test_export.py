"""Export: every format loaded by what consumes it and checked field by field against the
stored rows; selection, vote rules, reviewer exclusions, byte-identical re-export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset
from trl.data_utils import apply_chat_template, is_conversational, unpair_preference_dataset

from bot.core import Core
from bot.messages import Inbound
from storage.feedback import Selection
from storage.paraphrases import add_paraphrases
from storage.review import add_correction, exclude, list_exclusions, set_accepted, unexclude
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.tiny_model import build_tokenizer
from training.cleaning import Cleaner, Report
from training.export import EXCLUDED, VoteRule, write_export


def msg(text: str, n: int, platform: str = "test") -> Inbound:
    return Inbound(platform, "c1", f"in{n}", "42", "Sam", text)


async def exported(
    core: Core, fmt: str, selection: Selection | None = None, **options: object
) -> tuple[list[dict], Report]:
    out = io.StringIO()
    report = await core.store.read(
        lambda conn: write_export(
            conn, fmt, out, selection or Selection(), progress=False, **options
        )  # type: ignore[arg-type]
    )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == report.kept
    return records, report


def a(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


async def _scene(make_core: MakeCore) -> tuple[Core, dict[str, int], list]:
    """A 👎 reply corrected twice with a 👍 sibling, a 👍 reply, an unrated reply."""
    model = FakeModel(["bad answer", "good sibling", "liked answer", "plain"])
    core = await make_core(model=model)
    bad = await core.handle(msg("Q1 ✨", 1), RecordingTarget())
    sibling = await core.regenerate("test", "c1", bad.message_ids[0], RecordingTarget())
    liked = await core.handle(msg("Q2", 2), RecordingTarget())
    await core.handle(msg("Q3 unrated", 3), RecordingTarget())
    await core.vote("test", "c1", bad.message_ids[0], "u1", -1)
    await core.vote("test", "c1", bad.message_ids[0], "u2", -1)
    await core.vote("test", "c1", sibling.message_ids[0], "u1", 1)
    await core.vote("test", "c1", liked.message_ids[0], "u1", 1)
    await core.correct("test", "c1", bad.message_ids[0], "u3", "first fix")
    await core.correct("test", "c1", bad.message_ids[0], "u4", "corrected answer")
    ids = {"bad": bad.reply_id, "sibling": sibling.reply_id, "liked": liked.reply_id}
    return core, ids, [r.messages for r in model.requests]


def _load(tmp_path: Path, name: str, records: list[dict]) -> list[dict]:
    """The records as `datasets` loads a JSONL file, the way the trainers get them."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return list(load_dataset("json", data_files=str(path), split="train"))


async def test_every_format_matches_the_stored_rows(make_core: MakeCore, tmp_path: Path) -> None:
    core, ids, prompts = await _scene(make_core)
    rows = {row.id: row for row in await core.store.list_messages()}
    bad, sibling, liked = rows[ids["bad"]], rows[ids["sibling"]], rows[ids["liked"]]
    assert json.loads(bad.prompt_json) == prompts[0]  # the stored prompt, not a rebuilt one

    sft, _ = await exported(core, "sft")
    assert [(r["prompt"], r["completion"]) for r in sft] == [
        (prompts[0], a("corrected answer")),  # the newest correction of the 👎 reply
        (prompts[1], a("good sibling")),
        (prompts[2], a("liked answer")),
    ]
    meta = sft[0]["meta"]
    assert meta["reply_id"] == bad.id and meta["conversation_id"] == bad.conversation_id
    assert (meta["character"], meta["model"], meta["platform"]) == ("Aria", "fake", "test")
    assert (meta["up"], meta["down"], meta["lora_version"]) == (0, 2, None)
    assert meta["correction_authors"] == ["u3", "u4"]
    assert meta["correction_sources"] == ["user", "user"]
    assert meta["created_at"] == bad.created_at and meta["answer_from"] == "correction"
    loaded = _load(tmp_path, "sft", sft)
    assert all(is_conversational(r) for r in loaded)
    assert {"prompt", "completion"} <= set(loaded[0]) and "messages" not in loaded[0]
    assert loaded[0]["completion"] == a("corrected answer")

    messages, _ = await exported(core, "sft-messages")
    assert [r["messages"] for r in messages] == [[*r["prompt"], *r["completion"]] for r in sft]
    assert all(is_conversational(r) for r in _load(tmp_path, "msgs", messages))

    dpo, _ = await exported(core, "dpo")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in dpo] == [
        (prompts[0], a("corrected answer"), a("bad answer"))
    ]
    assert dpo[0]["meta"]["chosen_from"] == "correction"
    (loaded_dpo,) = _load(tmp_path, "dpo", dpo)
    assert is_conversational(loaded_dpo) and {"prompt", "chosen", "rejected"} <= set(loaded_dpo)

    kto, _ = await exported(core, "kto")
    assert [(r["prompt"], r["completion"], r["label"]) for r in kto] == [
        (prompts[0], a("bad answer"), False),
        (prompts[1], a("good sibling"), True),
        (prompts[2], a("liked answer"), True),
    ]
    loaded_kto = _load(tmp_path, "kto", kto)
    assert all(is_conversational(r) and isinstance(r["label"], bool) for r in loaded_kto)
    assert all("chosen" not in r for r in loaded_kto)  # unpaired: one completion, a label

    # TRL sorts examples into dataset types by their keys; each format lands in its own.
    tokenizer = build_tokenizer()
    rendered = apply_chat_template(loaded[0], tokenizer)
    assert set(rendered) == {"prompt", "completion"}  # prompt-completion
    assert rendered["completion"] == "corrected answer<|im_end|>\n"
    assert set(apply_chat_template(loaded_dpo, tokenizer)) == {"prompt", "chosen", "rejected"}
    unpaired = apply_chat_template(loaded_kto[0], tokenizer)
    assert set(unpaired) == {"prompt", "completion", "label"} and unpaired["label"] is False

    as_kto = unpair_preference_dataset(Dataset.from_list([loaded_dpo]).remove_columns("meta"))
    assert [(r["completion"], r["label"]) for r in as_kto] == [
        (a("corrected answer"), True),
        (a("bad answer"), False),
    ]

    review, _ = await exported(core, "review")
    first = review[0]
    assert (first["id"], first["character"], first["reply"]) == (bad.id, "Aria", "bad answer")
    assert (first["score"], first["up"], first["down"], first["model"]) == (-2, 0, 2, "fake")
    assert [c["text"] for c in first["corrections"]] == ["first fix", "corrected answer"]
    assert (first["better"], first["accept"], first["exclude"]) == ("", False, "")
    assert first["prompt"] == prompts[0]
    assert [r["id"] for r in review] == [bad.id, sibling.id, liked.id]


async def test_dpo_uses_a_liked_sibling_when_there_is_no_correction(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(["meh", "great"]))
    bad = await core.handle(msg("Q", 1), RecordingTarget())
    good = await core.regenerate("test", "c1", bad.message_ids[0], RecordingTarget())
    await core.vote("test", "c1", bad.message_ids[0], "u1", -1)
    await core.vote("test", "c1", good.message_ids[0], "u1", 1)
    (record,), _ = await exported(core, "dpo")
    assert (record["chosen"], record["rejected"]) == (a("great"), a("meh"))
    assert record["meta"]["chosen_from"] == "sibling"
    assert record["meta"]["chosen_reply_id"] == good.reply_id


async def test_re_export_is_byte_identical(make_core: MakeCore) -> None:
    core, ids, _ = await _scene(make_core)
    await add_paraphrases(core.store, ids["bad"], ["b?", "a?"], author="rita")
    await add_paraphrases(core.store, ids["bad"], ["c?"], source="generated", author="model")
    for fmt in ("sft", "sft-messages", "dpo", "kto", "review"):
        first, second = io.StringIO(), io.StringIO()
        for out in (first, second):
            await core.store.read(
                lambda conn, out=out, fmt=fmt: write_export(conn, fmt, out, progress=False)
            )
        assert first.getvalue() == second.getvalue() and first.getvalue()
        line = first.getvalue().splitlines()[0]
        assert line == json.dumps(json.loads(line), ensure_ascii=False, sort_keys=True)


async def test_accepted_reviewer_correction_wins_over_the_newest(make_core: MakeCore) -> None:
    core, ids, _ = await _scene(make_core)
    fix = await add_correction(core.store, ids["bad"], "rita", "reviewed", source="reviewer")
    await core.correct("test", "c1", (await core.store.platform_ids(ids["bad"]))[0], "u9", "newer")
    sft, _ = await exported(core, "sft")
    assert sft[0]["completion"] == a("newer")  # not accepted yet: the newest counts
    await set_accepted(core.store, fix)
    sft, _ = await exported(core, "sft")
    assert sft[0]["completion"] == a("reviewed")
    assert sft[0]["meta"]["correction_sources"] == ["user", "user", "reviewer", "user"]


async def test_excluded_replies_are_never_exported(make_core: MakeCore) -> None:
    core, ids, _ = await _scene(make_core)
    assert await exclude(core.store, ids["bad"], "mentions a real actor", "rita")
    assert not await exclude(core.store, ids["bad"], "again", "rita")  # once is enough
    (row,) = await list_exclusions(core.store, "aria")
    assert (row.message_id, row.reason, row.excluded_by) == (
        ids["bad"],
        "mentions a real actor",
        "rita",
    )
    for fmt in ("sft", "dpo", "kto", "review"):
        records, report = await exported(core, fmt)
        assert all(r.get("meta", r).get("reply_id", r.get("id")) != ids["bad"] for r in records)
        assert report.removed[EXCLUDED] == 1
    dpo, _ = await exported(core, "dpo")
    assert dpo == []  # the only 👎 reply is excluded
    assert await unexclude(core.store, ids["bad"])
    assert len((await exported(core, "dpo"))[0]) == 1


async def test_selection_and_vote_rules(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(["one", "two", "three"]))
    first = await core.handle(msg("Q1", 1), RecordingTarget())
    second = await core.handle(msg("Q2", 2, platform="discord"), RecordingTarget())
    third = await core.handle(msg("Q3 Bram?", 3), RecordingTarget())
    await core.vote("test", "c1", first.message_ids[0], "u1", 1)
    await core.vote("discord", "c1", second.message_ids[0], "u1", 1)
    await core.vote("discord", "c1", second.message_ids[0], "u2", 1)
    await core.vote("test", "c1", third.message_ids[0], "u1", 1)
    await core.vote("test", "c1", third.message_ids[0], "u2", -1)
    await core.vote("test", "c1", third.message_ids[0], "u3", 1)

    def texts(records: list[dict]) -> list[str]:
        return [r["completion"][0]["content"] for r in records]

    assert texts((await exported(core, "kto"))[0]) == ["one", "two", "three"]
    assert texts((await exported(core, "kto", Selection(platform="discord")))[0]) == ["two"]
    assert texts((await exported(core, "kto", votes=VoteRule(min_votes=2)))[0]) == ["two", "three"]
    kto_any, _ = await exported(core, "kto", votes=VoteRule(thumbs_down="any"))
    assert [r["label"] for r in kto_any] == [True, True, False]  # one 👎 is enough
    assert (await exported(core, "kto", Selection(character="bram")))[0] == []
    rows = {row.id: row for row in await core.store.list_messages()}
    middle = rows[second.reply_id].created_at
    since, _ = await exported(core, "kto", Selection(since=middle))
    until, _ = await exported(core, "kto", Selection(until=middle))
    assert (texts(since), texts(until)) == (["two", "three"], ["one"])
    assert len((await exported(core, "kto", Selection(lora_version="")))[0]) == 3
    assert (await exported(core, "kto", Selection(lora_version="v1")))[0] == []


async def test_cleaning_and_duplicates_are_counted(make_core: MakeCore) -> None:
    answers = ["Ask the director", "mail me@x.org", "same", "same"]
    core = await make_core(model=FakeModel(answers))
    for n in range(4):  # one chat each: four equal prompts
        inbound = Inbound("test", f"chat{n}", f"in{n}", "42", "Sam", "Same question")
        result = await core.handle(inbound, RecordingTarget())
        await core.vote("test", f"chat{n}", result.message_ids[0], "u1", 1)

    class Rules:
        exclude_words = ("director",)
        exclude_patterns = ()
        min_chars = 1
        max_chars = 0
        scrub = ("email",)

    sft, report = await exported(core, "sft", cleaners={"aria": Cleaner(Rules())})
    assert [r["completion"][0]["content"] for r in sft] == ["mail [email]", "same"]
    assert report.removed == {"exclude word 'director'": 1, "exact duplicate": 1}
    assert report.changed == {"scrubbed email": 1}
    assert (report.read, report.kept) == (4, 2)
    unclean, report = await exported(core, "sft")
    assert len(unclean) == 3 and report.removed == {"exact duplicate": 1}


# -- through the CLI: the review round trip, bad input, an empty export ---------------------

CLI_CONFIG = """
[model]
backend = "echo"

[storage]
url = "sqlite:///charbot.db"

[[characters]]
name = "Aria"
description = "A cheerful starship navigator."
"""


async def _populate(url: str) -> dict[str, int]:
    from bot.config import ModelSettings
    from storage.store import Store
    from tests.conftest import DEFAULT_CHARACTERS

    store = await Store.open(url)
    core = Core(
        store=store,
        model=FakeModel(["first", "second", "third"]),
        characters=list(DEFAULT_CHARACTERS),
        settings=ModelSettings(backend="fake"),
    )
    await core.start()
    ids = {}
    for n, name in enumerate(("first", "second", "third")):
        result = await core.handle(msg(f"Q{n}", n), RecordingTarget())
        await core.vote("test", "c1", result.message_ids[0], "u1", -1)
        ids[name] = result.reply_id
    await core.close()
    await store.close()
    return ids


def _cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CLI_CONFIG, encoding="utf-8")
    return path


def _corrections(tmp_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(tmp_path / "charbot.db") as db:
        return db.execute(
            "SELECT message_id, user_id, text, source, accepted FROM corrections ORDER BY id"
        ).fetchall()


def test_review_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import asyncio

    from charbot.cli import main

    config = _cli_config(tmp_path)
    ids = asyncio.run(_populate(f"sqlite:///{tmp_path / 'charbot.db'}"))
    review = tmp_path / "review.jsonl"
    assert (
        main(["--config", str(config), "export", "--format", "review", "--out", str(review)]) == 0
    )
    filled = [json.loads(line) for line in review.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in filled] == [ids["first"], ids["second"], ids["third"]]
    filled[0]["better"] = "A much better first answer."
    filled[0]["accept"] = True
    filled[1]["exclude"] = "off-topic"
    # the third stays empty: skipped
    gone = {**filled[2], "id": 9999, "better": "for a reply deleted since"}
    review.write_text("".join(json.dumps(r) + "\n" for r in [*filled, gone]), encoding="utf-8")

    args = ["--config", str(config), "import-corrections", str(review), "--author", "rita"]
    assert main(args) == 0
    said = capsys.readouterr().err
    assert "1 corrections added, 0 already stored, 1 replies excluded, 1 records left empty" in said
    assert "1 replies no longer exist: 9999" in said
    stored = _corrections(tmp_path)
    assert stored == [(ids["first"], "rita", "A much better first answer.", "import", 1)]
    assert main(args) == 0  # twice: nothing changes
    assert "0 corrections added, 1 already stored, 0 replies excluded" in capsys.readouterr().err
    assert _corrections(tmp_path) == stored

    sft = tmp_path / "sft.jsonl"
    assert main(["--config", str(config), "export", "--format", "kto", "--out", str(sft)]) == 0
    assert "removed       1  excluded by a reviewer" in capsys.readouterr().err
    kto = [json.loads(line) for line in sft.read_text().splitlines()]
    assert [r["meta"]["reply_id"] for r in kto] == [ids["first"], ids["third"]]
    assert main(["--config", str(config), "export", "--format", "sft", "--out", str(sft)]) == 0
    (record,) = [json.loads(line) for line in sft.read_text().splitlines()]
    assert record["completion"] == a("A much better first answer.")
    assert record["meta"]["correction_sources"] == ["import"]


def test_review_file_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import asyncio

    from charbot.cli import main

    config = _cli_config(tmp_path)
    ids = asyncio.run(_populate(f"sqlite:///{tmp_path / 'charbot.db'}"))
    review = tmp_path / "review.jsonl"
    good = json.dumps({"id": ids["first"], "better": "fine"})
    review.write_text(f"{good}\n{{not json\n" + '{"id": "x", "better": "y"}\n', encoding="utf-8")
    args = ["--config", str(config), "import-corrections", str(review)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{review}:2: not JSON" in error and error.count("\n") == 1
    assert _corrections(tmp_path) == []  # all or nothing
    assert main([*args, "--skip-bad"]) == 0
    assert len(_corrections(tmp_path)) == 1
    rejects = review.with_name("review.jsonl.rejects.jsonl").read_text().splitlines()
    assert [json.loads(line)["line"] for line in rejects] == [2, 3]


def _paraphrases(tmp_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(tmp_path / "charbot.db") as db:
        return db.execute(
            "SELECT message_id, text, source, author FROM paraphrases ORDER BY id"
        ).fetchall()


def test_paraphrases_round_trip_through_the_review_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import asyncio

    from charbot.cli import main

    config = _cli_config(tmp_path)
    ids = asyncio.run(_populate(f"sqlite:///{tmp_path / 'charbot.db'}"))
    review = tmp_path / "review.jsonl"
    export_review = ["--config", str(config), "export", "--format", "review"]
    assert main([*export_review, "--out", str(review)]) == 0
    filled = [json.loads(line) for line in review.read_text(encoding="utf-8").splitlines()]
    assert [r["paraphrases"] for r in filled] == [[], [], []]  # an editable list, empty
    filled[0]["better"] = "The first, better."
    filled[0]["paraphrases"] = [" What was Q0 again? ", "", "Q0, in other words?"]
    filled[1]["paraphrases"] = ["Q1 — said differently?"]  # no better answer: not empty
    review.write_text("".join(json.dumps(r) + "\n" for r in filled), encoding="utf-8")

    args = ["--config", str(config), "import-corrections", str(review), "--author", "rita"]
    assert main(args) == 0
    said = capsys.readouterr().err
    assert (
        "1 corrections added, 0 already stored, 0 replies excluded, 1 records left empty, "
        "3 paraphrases added (0 already stored)"
    ) in said
    stored = _paraphrases(tmp_path)
    assert stored == [
        (ids["first"], "What was Q0 again?", "reviewer", "rita"),
        (ids["first"], "Q0, in other words?", "reviewer", "rita"),
        (ids["second"], "Q1 — said differently?", "reviewer", "rita"),
    ]
    assert main(args) == 0  # twice: nothing changes
    assert "0 paraphrases added (3 already stored)" in capsys.readouterr().err
    assert _paraphrases(tmp_path) == stored

    sft = tmp_path / "sft.jsonl"
    assert main(["--config", str(config), "export", "--format", "sft", "--out", str(sft)]) == 0
    (record,) = [json.loads(line) for line in sft.read_text(encoding="utf-8").splitlines()]
    assert record["meta"]["reply_id"] == ids["first"]
    assert record["meta"]["paraphrases"] == ["Q0, in other words?", "What was Q0 again?"]
    assert main([*export_review, "--out", str(review)]) == 0  # the stored ones, to add to
    again = [json.loads(line) for line in review.read_text(encoding="utf-8").splitlines()]
    assert [r["paraphrases"] for r in again] == [
        ["Q0, in other words?", "What was Q0 again?"],
        ["Q1 — said differently?"],
        [],
    ]


@pytest.mark.parametrize(
    "value",
    ['"How far?"', '[1, "How far?"]', '{"text": "How far?"}', "null", '["' + "x" * 501 + '"]'],
)
def test_a_bad_paraphrases_value_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str
) -> None:
    import asyncio

    from charbot.cli import main

    config = _cli_config(tmp_path)
    ids = asyncio.run(_populate(f"sqlite:///{tmp_path / 'charbot.db'}"))
    review = tmp_path / "review.jsonl"
    fine = json.dumps({"id": ids["first"], "paraphrases": ["Is this one fine?"]})
    review.write_text(f'{fine}\n{{"id": {ids["second"]}, "paraphrases": {value}}}\n')
    args = ["--config", str(config), "import-corrections", str(review)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{review}:2: " in error, error
    assert '"paraphrases"' in error and "fix it or pass --skip-bad" in error
    if value.startswith('["x'):
        assert "is 501 characters long; shorten it to 500" in error
    else:
        assert 'must be a list of texts, e.g. ["How far can it jump?"], or []' in error
    assert _paraphrases(tmp_path) == []  # all or nothing
    assert main([*args, "--skip-bad"]) == 0
    assert _paraphrases(tmp_path) == [(ids["first"], "Is this one fine?", "reviewer", "reviewer")]


def test_nothing_to_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from charbot.cli import main

    config = _cli_config(tmp_path)
    out = tmp_path / "dpo.jsonl"
    assert main(["--config", str(config), "export", "--format", "dpo", "--out", str(out)]) == 0
    assert out.read_bytes() == b""
    assert "nothing to export: no dpo records match" in capsys.readouterr().err
    assert main(["--config", str(config), "export", "--since", "yesterday"]) == 2
    assert "--since 'yesterday': not a date" in capsys.readouterr().err


async def test_iter_records_reads_a_store_directly(make_core: MakeCore) -> None:
    """What a trainer calls: records straight from the store, no file in between."""
    import asyncio

    from training.export import iter_records

    core, ids, prompts = await _scene(make_core)
    report = Report()
    found = await asyncio.to_thread(lambda: list(iter_records(core.store, "sft", report=report)))
    assert [r["meta"]["reply_id"] for r in found] == [ids["bad"], ids["sibling"], ids["liked"]]
    assert found[0]["prompt"] == prompts[0] and report.kept == 3


async def test_postgresql_exports_what_sqlite_exports(tmp_path: Path, pg_url: str) -> None:
    """The migration and the streamed queries (server-side cursors there) on PostgreSQL."""
    from bot.config import ModelSettings
    from storage.store import Store
    from storage.swipes import keep
    from tests.conftest import DEFAULT_CHARACTERS

    outputs = []
    for url in (f"sqlite:///{tmp_path / 'same.db'}", pg_url):
        store = await Store.open(url)
        opened: list[Core] = []

        async def factory(model: FakeModel, store: Store = store, opened: list = opened) -> Core:
            core = Core(
                store=store,
                model=model,
                characters=list(DEFAULT_CHARACTERS),
                settings=ModelSettings(backend="fake"),
            )
            await core.start()
            opened.append(core)
            return core

        core, ids, _ = await _scene(factory)
        await exclude(core.store, ids["liked"], "test", "rita")
        await keep(core.store, kept_id=ids["sibling"], relink_id=None, user_id="u1")
        await add_paraphrases(core.store, ids["bad"], ["Q1, once more?", "Und Q1?"], author="r")
        await add_paraphrases(core.store, ids["sibling"], ["zz?", "Ähm, Q1?", "A Q1?"], author="r")
        found = {}
        for fmt in ("sft", "dpo", "kto", "review"):
            records, report = await exported(core, fmt)
            for record in records:  # times differ between the two runs
                for holder in (record, record.get("meta", {})):
                    for key in ("created_at", "corrected_at"):
                        holder.pop(key, None)
            found[fmt] = (records, report.as_dict())
        outputs.append(found)
        for core in opened:
            await core.close()
        await store.close()
    assert outputs[0] == outputs[1]
    assert outputs[1]["sft"][1]["removed"] == {EXCLUDED: 1}
    assert outputs[1]["dpo"][0][0]["meta"]["swipe"] == "away"
    # Sorted by code point on both, whatever PostgreSQL's collation says.
    sft = {r["meta"]["reply_id"]: r["meta"]["paraphrases"] for r in outputs[1]["sft"][0]}
    assert sft[ids["sibling"]] == ["A Q1?", "zz?", "Ähm, Q1?"]


async def test_dpo_pairs_the_kept_swipe_against_the_swiped_away(make_core: MakeCore) -> None:
    from storage.feedback import count_feedback, iter_feedback
    from storage.swipes import keep

    core = await make_core(model=FakeModel(["take one", "take two", "take three", "fourth"]))
    first = await core.handle(msg("Tell me a story", 1), RecordingTarget())
    second = await core.regenerate("test", "c1", first.message_ids[0], RecordingTarget())
    third = await core.regenerate("test", "c1", first.message_ids[0], RecordingTarget())
    await core.handle(msg("unrelated, unrated", 2), RecordingTarget())
    await keep(core.store, kept_id=third.reply_id, relink_id=None, user_id="u1")
    await keep(core.store, kept_id=second.reply_id, relink_id=None, user_id="u1")  # newest
    await core.vote("test", "c1", third.message_ids[0], "u2", 1)  # liked, though swiped away
    dpo, _ = await exported(core, "dpo")
    assert [(r["chosen"], r["rejected"], r["meta"]["chosen_from"]) for r in dpo] == [
        (a("take two"), a("take one"), "kept swipe")
    ]
    assert dpo[0]["meta"]["chosen_reply_id"] == second.reply_id
    assert dpo[0]["meta"]["swipe"] == "away"
    # Only the 👍 sibling is voted or corrected: the other formats see nothing else.
    assert [r["id"] for r in (await exported(core, "review"))[0]] == [third.reply_id]
    assert len((await exported(core, "kto"))[0]) == 1
    await core.vote("test", "c1", first.message_ids[0], "u2", -1)
    await core.correct("test", "c1", first.message_ids[0], "u2", "A better story.")
    (record,), _ = await exported(core, "dpo")
    assert (record["chosen"], record["meta"]["chosen_from"]) == (a("A better story."), "correction")

    def counted(conn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        return count_feedback(conn), len(list(iter_feedback(conn)))

    total, rows = await core.store.read(counted)
    assert total == rows == 3
