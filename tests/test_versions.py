"""LoRA versions: never overwritten, full metadata, interrupted runs never selectable; the
choice of version persists, survives a restart, reaches a running bot, and rolls back."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from bot.core import Core
from bot.loras import BaseIdentity, LoraError, LoraSwitcher, find_version, list_versions
from storage import lora_choices
from storage.store import Store
from tests.fakes import FakeModel, RecordingTarget
from training.versions import new_run, publish


def fake_run(loras: Path, character: str = "Aria", weights: bytes = b"w1"):  # type: ignore[no-untyped-def]
    """A run whose "training" wrote a LoRA (the file contents stand in for weights)."""
    run = new_run(loras, character)
    run.lora_dir.mkdir()
    (run.lora_dir / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (run.lora_dir / "adapter_model.safetensors").write_bytes(weights)
    return run


def metadata(base: str = "tiny", fingerprint: str = "abc") -> dict:  # type: ignore[type-arg]
    return {
        "method": "sft",
        "parent": None,
        "base_model": {"name": base, "fingerprint": fingerprint},
        "hyperparameters": {"rank": 4},
        "stages": [{"name": "feedback", "files": [{"path": "x", "sha256": "y", "records": 3}]}],
    }


def test_versions_never_overwrite_and_carry_their_metadata(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    first = publish(fake_run(loras), loras, metadata())
    # The same weights and metadata again: still a new version, the first one untouched.
    second = publish(fake_run(loras), loras, metadata())
    assert (first.number, second.number) == (1, 2)
    assert first.id.startswith("v0001-") and second.id.startswith("v0002-")
    assert first.id != second.id
    assert [v.id for v in list_versions(loras, "Aria")] == [first.id, second.id]
    stored = json.loads((first.path / "metadata.json").read_text())
    assert stored["id"] == first.id
    assert stored["base_model"] == {"name": "tiny", "fingerprint": "abc"}
    assert stored["stages"][0]["files"][0]["records"] == 3
    assert len(stored["content_sha256"]) == 64
    assert (first.path / "adapter_model.safetensors").read_bytes() == b"w1"
    assert not list((loras / "Aria").glob(".run-*"))  # the run directories are gone


def test_an_interrupted_run_leaves_nothing_selectable(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    fake_run(loras)  # trained, never published: as if killed before the rename
    assert list_versions(loras, "Aria") == []
    with pytest.raises(LoraError, match="no LoRA version"):
        find_version(loras, "Aria", "v1")
    version = publish(fake_run(loras), loras, metadata())
    assert find_version(loras, "Aria", "1") == version
    assert find_version(loras, "Aria", "v0001") == version
    assert find_version(loras, "Aria", version.id[:9]) == version


_ids = itertools.count(1)


async def _reply(core: Core) -> None:
    from bot.messages import Inbound

    msg = Inbound(
        platform="test",
        chat_id="c1",
        message_id=f"u{next(_ids)}",
        author_id="u1",
        author_name="Ann",
        text="Aria, hello",
        addressed=True,
    )
    await core.handle(msg, RecordingTarget())


async def _switcher(core: Core, store: Store, loras: Path, poll: float = 0.0) -> LoraSwitcher:
    switcher = LoraSwitcher(core, store, loras, BaseIdentity("tiny", "abc"), poll_seconds=poll)
    await switcher.start()
    core.loras = switcher
    return switcher


async def test_use_and_rollback_change_what_the_core_generates_with_and_survive_a_restart(
    make_core, tmp_path: Path
) -> None:
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras, weights=b"1"), loras, metadata())
    v2 = publish(fake_run(loras, weights=b"2"), loras, metadata())
    model = FakeModel()
    core = await make_core(model=model)
    switcher = await _switcher(core, core.store, loras)
    assert await switcher.use("aria", "v1", "admin") == v1.id
    assert await switcher.use("Aria", v2.id, "admin") == v2.id
    await _reply(core)
    assert model.requests[-1].lora.path == str(v2.path)

    # A restart: a new core on the same database speaks with v2 from its first reply.
    model2 = FakeModel()
    core2 = await make_core(model=model2)
    switcher2 = await _switcher(core2, core2.store, loras)
    await _reply(core2)
    assert model2.requests[-1].lora.path == str(v2.path)
    assert switcher2.current("Aria") == v2.id

    assert await switcher2.rollback("Aria") == v1.id
    await _reply(core2)
    assert model2.requests[-1].lora.path == str(v1.path)
    assert await switcher2.rollback("Aria") is None  # back to the configured (no LoRA)
    await _reply(core2)
    assert model2.requests[-1].lora is None
    with pytest.raises(Exception, match="nothing to roll back"):
        await switcher2.rollback("Aria")


async def test_a_running_bot_notices_a_choice_made_by_another_process(
    make_core, db_url: str, tmp_path: Path
) -> None:
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata())
    model = FakeModel()
    core = await make_core(model=model)
    switcher = await _switcher(core, core.store, loras, poll=0.05)
    try:
        other = await Store.open(db_url)  # `charbot LoRAs use` in another process
        await lora_choices.record_choice(other, "Aria", v1.id, str(v1.path), "cli")
        await other.close()
        for _ in range(100):
            if model.loras.get("Aria") == str(v1.path):
                break
            await asyncio.sleep(0.02)
        assert model.loras.get("Aria") == str(v1.path)
        await _reply(core)
        rows = await core.store.list_messages("test", "c1")
        assert [r.lora_version for r in rows if r.role == "assistant"] == [None]  # fake
    finally:
        await switcher.close()


async def test_a_version_for_another_base_model_is_refused(make_core, tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    publish(fake_run(loras), loras, metadata(base="other", fingerprint="f00"))
    core = await make_core(model=FakeModel())
    switcher = await _switcher(core, core.store, loras)
    with pytest.raises(LoraError, match="another base model"):
        await switcher.use("Aria", "v1", "admin")
    assert await lora_choices.current_choices(core.store) == {}
    assert switcher.current("Aria") is None


class VersionedFake(FakeModel):
    """A FakeModel that reports the LoRA version it used, as the real backend does."""

    async def stream(self, request):  # type: ignore[no-untyped-def, override]
        async for chunk in super().stream(request):
            if chunk.usage is not None and request.lora is not None:
                chunk.usage.lora_version = Path(request.lora.path).name
            yield chunk


def _config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[model]
backend = "echo"
[storage]
url = "{db_url}"
[training]
loras_dir = "{tmp_path / "loras"}"
[[characters]]
name = "Aria"
[[characters]]
name = "Bram"
"""
    )
    return path


async def test_cli_lists_uses_rolls_back_and_counts_feedback_per_version(
    make_core, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charbot.cli import main

    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata(base="smollm2", fingerprint=""))
    v2 = publish(fake_run(loras), loras, metadata(base="smollm2", fingerprint=""))
    other = publish(fake_run(loras), loras, metadata(base="other", fingerprint="f00"))
    core = await make_core(model=VersionedFake())
    switcher = await _switcher(core, core.store, loras)
    switcher.base = BaseIdentity("smollm2")
    for version, vote in ((None, 1), ("v1", -1), ("v2", 1), (None, 1)):  # None: no switch
        if version:
            await switcher.use("Aria", version, "test")
        await _reply(core)
        (row,) = [r for r in await core.store.list_messages() if r.role == "assistant"][-1:]
        await core.store.set_vote(row.id, "ann", vote)
        if vote < 0:
            await core.store.add_correction(row.id, "ann", "Better.")
    config = str(_config(tmp_path, db_url))
    capsys.readouterr()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", config])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await asyncio.to_thread(run, "stats", "--by-version")
    assert code == 0
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()[1:]}
    assert lines[("Aria", "base")] == ["1", "100%", "0%", "0"]
    assert lines[("Aria", v1.id)] == ["1", "0%", "100%", "1"]
    assert lines[("Aria", v2.id)] == ["2", "100%", "0%", "0"]

    code, out, _ = await asyncio.to_thread(run, "loras", "list", "aria")
    assert code == 0 and f"▶ {v2.id}" in out and f"  {v1.id}" in out

    code, out, _ = await asyncio.to_thread(run, "loras", "rollback", "Aria")
    assert code == 0 and f"Aria now speaks with {v1.id}" in out
    await switcher.apply()  # what the running bot's next poll does
    assert switcher.current("Aria") == v1.id

    code, _, err = await asyncio.to_thread(run, "loras", "use", "Aria", "v9")
    assert code == 2 and "no LoRA version 'v9'" in err and len(err.splitlines()) == 1
    code, _, err = await asyncio.to_thread(run, "loras", "use", "Aria", other.id)
    assert code == 2 and "another base model" in err and len(err.splitlines()) == 1
    code, _, err = await asyncio.to_thread(run, "loras", "use", "Nobody", "v1")
    assert code == 2 and "unknown character" in err
    assert (await lora_choices.current_choices(core.store))["aria"].version == v1.id


def test_not_enough_disk_is_one_line_before_training(tmp_path: Path) -> None:
    from training.versions import VersionError, check_disk

    check_disk(tmp_path / "loras", 1)
    with pytest.raises(VersionError, match=r"not enough disk space in .* MB free") as caught:
        check_disk(tmp_path / "loras", 10**18)
    assert "\n" not in str(caught.value)


async def test_the_console_lists_and_switches_versions_by_name(make_core, tmp_path: Path) -> None:
    from tests.test_console import run_script

    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata())
    model = FakeModel()
    core = await make_core(model=model)
    await _switcher(core, core.store, loras)
    output = await run_script(core, "/LoRA\n/LoRA v1\nhi\n/LoRA rollback\n")
    assert f"• {v1.id}" in output
    assert f"[Aria now speaks with {v1.id}.]" in output
    assert model.requests[0].lora.path == str(v1.path)
    assert "[Aria rolled back; it now speaks with base.]" in output
    assert model.loras == {}
