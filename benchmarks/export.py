"""Export at scale: a store with 1,000,000 messages and 100,000 ratings, each format timed.

    .venv/bin/python benchmarks/export.py [--db PATH] [--json FILE]

The store is built once (kept at --db, default /tmp/charbot-export-bench.db) through the real
migrations, then filled with plain INSERTs: conversations of two exchanges with the exact
prompts the bot stores (persona + history), some replies regenerated, 100,000 votes, 10,000
corrections, 1,000 reviewer exclusions and 10,000 kept swipes. Each format runs in a fresh
process, so its peak resident memory (ru_maxrss) is its own; CPU time is printed beside wall
time because the machine is shared. Targets: < 30 s per format, peak RSS < 500 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MESSAGES = 1_000_000
RATINGS = 100_000
CORRECTIONS = 10_000
EXCLUSIONS = 1_000
SWIPES = 10_000  # regenerated replies whose sibling a person kept
PERSONA = (
    "You are Bram, the keeper of the lighthouse on Gull Rock. Gruff, dry humour, short "
    "sentences, secretly kind; distrusts anything with a battery; knows the sea and the weather "
    "better than anyone. A storm has driven the user's boat onto Gull Rock."
)


def _words(rng: random.Random, n: int) -> str:
    vocabulary = [
        "sea",
        "storm",
        "light",
        "lamp",
        "tea",
        "cat",
        "boat",
        "rope",
        "tide",
        "fog",
        "gull",
        "wind",
        "rock",
        "keeper",
        "oil",
    ]
    return " ".join(rng.choice(vocabulary) for _ in range(n)).capitalize() + "."


def build(path: Path) -> None:
    """Create the benchmark store at ``path``."""
    import sqlite3

    from sqlalchemy import create_engine

    from storage.migrations import migrate_locked

    migrate_locked(create_engine(f"sqlite:///{path}"))
    rng = random.Random(0)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    messages, replies, regenerated = [], [], []
    conversation = 0
    now = 1_700_000_000.0
    columns = (
        "id, conversation_id, platform, chat_id, platform_message_id, role, author_id, "
        "author_name, text, reply_to_id, regenerated_from_id, character, lora_version, model, "
        "prompt_json, sampling_json, status, created_at"
    )
    insert = f"INSERT INTO messages ({columns}) VALUES ({', '.join('?' * 18)})"
    next_id = 1
    started = time.perf_counter()
    while next_id <= MESSAGES:
        conversation += 1
        platform = ("discord", "telegram")[conversation % 2]
        chat = str(conversation % 5000)
        db.execute(
            "INSERT INTO conversations (id, platform, chat_id, thread_id, started_at) "
            "VALUES (?, ?, ?, '', ?)",
            (conversation, platform, chat, now),
        )
        history = [{"role": "system", "content": PERSONA}]
        parent = None
        for _turn in range(2):
            if next_id > MESSAGES:
                break
            question = _words(rng, rng.randint(4, 16))
            user_id = next_id
            messages.append(
                (
                    user_id,
                    conversation,
                    platform,
                    chat,
                    f"p{user_id}",
                    "user",
                    "u",
                    "Sam",
                    question,
                    parent,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "ok",
                    now,
                )
            )
            next_id += 1
            history.append({"role": "user", "content": question})
            prompt = json.dumps(history, ensure_ascii=False)
            takes = 2 if rng.random() < 0.1 else 1  # some replies are regenerated
            first = None
            for _take in range(takes):
                if next_id > MESSAGES:
                    break
                answer = _words(rng, rng.randint(6, 40))
                character, version = ("Bram", "v0001") if conversation % 3 else ("Mara", None)
                messages.append(
                    (
                        next_id,
                        conversation,
                        platform,
                        chat,
                        f"p{next_id}",
                        "assistant",
                        "bot",
                        character,
                        answer,
                        user_id,
                        first,
                        character,
                        version,
                        "smollm2",
                        prompt,
                        '{"temperature": 0.7}',
                        "ok",
                        now,
                    )
                )
                replies.append(next_id)
                if first is not None:
                    regenerated.append((next_id, user_id))
                first = first or next_id
                next_id += 1
                now += 0.5
            history.append({"role": "assistant", "content": answer})
            parent = next_id - 1
        if len(messages) >= 50_000:
            db.executemany(insert, messages)
            messages.clear()
            print(f"\rbuilding: {next_id - 1:,} messages", end="", file=sys.stderr)
    db.executemany(insert, messages)
    rated = rng.sample(replies, RATINGS * 4 // 5)
    votes = [(m, "u1", rng.choice((1, 1, -1)), now, now) for m in rated]
    votes += [(m, "u2", rng.choice((1, -1)), now, now) for m in rated[: RATINGS - len(votes)]]
    db.executemany(
        "INSERT INTO ratings (message_id, user_id, value, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?)",
        votes,
    )
    db.executemany(
        "INSERT INTO corrections (message_id, user_id, text, created_at, source, accepted) "
        "VALUES (?, 'u3', ?, ?, 'user', 0)",
        [(m, _words(rng, 12), now) for m in rng.sample(rated, CORRECTIONS)],
    )
    db.executemany(
        "INSERT INTO exclusions (message_id, reason, excluded_by, created_at) "
        "VALUES (?, 'benchmark', 'rita', ?)",
        [(m, now) for m in rng.sample(rated, EXCLUSIONS)],
    )
    db.executemany(
        "INSERT INTO swipe_choices (kept_id, parent_id, user_id, created_at) "
        "VALUES (?, ?, 'u1', ?)",
        [(kept, parent, now) for kept, parent in rng.sample(regenerated, SWIPES)],
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(
        f"\rbuilt {MESSAGES:,} messages in {time.perf_counter() - started:.0f} s", file=sys.stderr
    )


def run_one(path: Path, fmt: str) -> dict[str, object]:
    """Export one format to a file; called in a fresh process."""
    from sqlalchemy import create_engine

    from training.cleaning import Cleaner
    from training.export import write_export

    class Rules:  # the shipped defaults: scrubbing on, a length bound
        exclude_words = ("battery",)
        exclude_patterns = ()
        min_chars = 1
        max_chars = 4000
        scrub = ("email", "phone", "url", "mention")

    engine = create_engine(f"sqlite:///{path}")
    out_path = path.with_suffix(f".{fmt}.jsonl")
    started, cpu = time.perf_counter(), time.process_time()
    with engine.connect() as conn, out_path.open("w", encoding="utf-8") as out:
        report = write_export(conn, fmt, out, cleaners={"": Cleaner(Rules())}, progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "format": fmt,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),  # unlike wall time, not stretched by other processes
        "records": report.kept,
        "removed": sum(report.removed.values()),
        "peak_rss_mb": round(peak_mb),
        "bytes": out_path.stat().st_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, default=Path("/tmp/charbot-export-bench.db"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one format
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.db, args.one)))
        return 0
    if not args.db.exists():
        build(args.db)
    from training.records import FORMATS

    rows = []
    for fmt in FORMATS:
        done = subprocess.run(
            [sys.executable, __file__, "--db", str(args.db), "--one", fmt],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(done.stdout))
    print("| format | records | time | CPU time | peak RSS | output |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['format']} | {row['records']:,} | {row['seconds']:.1f} s "
            f"| {row['cpu_seconds']:.1f} s "
            f"| {row['peak_rss_mb']} MB | {row['bytes'] / 1e6:.0f} MB |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
