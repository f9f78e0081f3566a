"""Does a fine-tune on a dozen corrections make a shipped character better, or a parrot?

    nice -n 10 .venv/bin/python benchmarks/loop_quality.py [--characters Bram] [--set KEY=VALUE]

For each shipped character (config.toml's Mara, Bram, Pip) in a throwaway database and
LoRA folder: the bot is asked the 12 questions of benchmarks/loop_cases.py and 20 unrelated
messages as a user would ask them; the 12 replies get 👎 and the user's corrections; then
`charbot train --character NAME` with the shipped defaults (or ``--set`` overrides of
[training], to compare recipes), the paraphrases and keywords of the cases are put beside
the version's corrections, and `charbot eval --against base` asks both the new version and
the bare base (before) every set. Printed per character, before → after: paraphrased recall
of the corrections (target ≥ 70%), leak rate on unrelated prompts (≤ 2%), distinct replies
(≥ 95%), persona facts (not lower), training time (< 3 min).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loop_cases import CASES  # noqa: E402
from bot.config import load_config  # noqa: E402
from bot.messages import Inbound  # noqa: E402
from charbot.cli import main as charbot  # noqa: E402
from charbot.wiring import open_core  # noqa: E402
from tests.fakes import RecordingTarget  # noqa: E402

_ids = itertools.count(1)


def throwaway_config(tmp: Path, overrides: list[str]) -> Path:
    """The shipped config.toml with its database, LoRAs and reports in ``tmp``."""
    text = (ROOT / "config.toml").read_text()
    text = text.replace('"characters/', f'"{ROOT}/characters/')
    text = text.replace('cache_dir = "data/models"', f'cache_dir = "{ROOT}/data/models"')
    text = text.replace("sqlite:///data/charbot.db", f"sqlite:///{tmp}/loop.db")
    for key in ("loras_dir", "datasets_dir", "reports_dir"):
        text = re.sub(rf'^{key} = "[^"]*"', f'{key} = "{tmp}/{key}"', text, flags=re.MULTILINE)
    for override in overrides:  # over the shipped value where config.toml sets the key
        key = override.split("=", 1)[0].strip()
        pattern = rf"^{re.escape(key)} = .*$"
        if re.search(pattern, text, flags=re.MULTILINE):
            text = re.sub(pattern, override, text, count=1, flags=re.MULTILINE)
        else:
            text = text.replace("[training]", f"[training]\n{override}", 1)
    path = tmp / "config.toml"
    path.write_text(text)
    return path


async def converse(config_path: Path, name: str) -> None:
    """The user's side: questions, 👎 and corrections, unrelated chat, as the bot sees it."""
    cases = CASES[name]
    config = load_config(config_path)
    async with open_core(config) as core:

        async def ask(text: str):  # type: ignore[no-untyped-def]
            chat = f"c{next(_ids)}"
            inbound = Inbound(
                platform="bench",
                chat_id=chat,
                message_id=f"q{next(_ids)}",
                author_id="alex",
                author_name="Alex",
                text=text,
                addressed=True,
                character=name,
            )
            result = await core.handle(inbound, RecordingTarget())
            assert result is not None and result.message_ids, result
            return chat, result.message_ids[0]

        asked = await asyncio.gather(*(ask(c.question) for c in cases.corrections))
        for (chat, reply), correction in zip(asked, cases.corrections, strict=True):
            assert await core.vote("bench", chat, reply, "alex", -1)
            assert await core.correct("bench", chat, reply, "alex", correction.answer)
        await asyncio.gather(*(ask(text) for text in cases.unrelated))


def add_paraphrases(version_dir: Path, name: str) -> None:
    """The cases' paraphrases and keywords beside the version's corrections (as a reviewer
    writes them in the review file)."""
    by_question = {c.question: c for c in CASES[name].corrections}
    file = version_dir / "data" / "corrections.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines() if line]
    for row in rows:
        case = by_question[row["question"]]
        row["paraphrases"] = list(case.paraphrases)
        row["keywords"] = list(case.keywords)
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))


def one(name: str, overrides: list[str]) -> dict:  # type: ignore[type-arg]
    tmp = Path(tempfile.mkdtemp(prefix=f"charbot-quality-{name}-"))
    config_path = throwaway_config(tmp, overrides)
    asyncio.run(converse(config_path, name))
    started = time.perf_counter()
    code = charbot(["train", "--config", str(config_path), "--character", name, "--quiet"])
    train_s = time.perf_counter() - started
    assert code == 0, code
    (version_dir,) = (tmp / "loras_dir" / name).glob("v0001-*")
    add_paraphrases(version_dir, name)
    code = charbot(
        ["eval", "--config", str(config_path), "--character", name, "--against", "base", "--quiet"]
    )
    assert code == 0, code
    meta = json.loads((version_dir / "metadata.json").read_text())
    evaluation = meta["evaluation"]
    (report,) = (tmp / "reports_dir").glob(f"{name}-*/report.md")
    return {
        "character": name,
        "after": evaluation,
        "before": evaluation["baseline"],
        "train_s": train_s,
        "recipe": meta.get("recipe"),
        "report": str(report),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def table(results: list[dict], label: str) -> str:  # type: ignore[type-arg]
    lines = [
        f"recipe: {label}",
        "",
        "| character | paraphrased recall | leak rate | distinct | persona | train |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['character']} | {_pct(b['paraphrase_recall'])} → "
            f"{_pct(a['paraphrase_recall'])} | {_pct(b['leak_rate'])} → {_pct(a['leak_rate'])} "
            f"| {_pct(b['distinct_rate'])} → {_pct(a['distinct_rate'])} | "
            f"{_pct(b['persona_score'])} → {_pct(a['persona_score'])} | {r['train_s']:.0f} s |"
        )
    lines.append("| target | ≥ 70% | ≤ 2% | ≥ 95% | not lower | < 180 s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", nargs="+", default=list(CASES))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a [training] setting"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = [one(name, args.set) for name in args.characters]
    print()
    print(table(results, ", ".join(args.set) or "the shipped defaults"))
    for r in results:
        print(f"{r['character']}: report {r['report']}; recipe {r['recipe']}")
    load = os.getloadavg()
    print(f"\nload average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
