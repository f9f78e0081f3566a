"""Export stored feedback as TRL-ready JSONL, streamed: bounded memory at any size.

``iter_records`` is what a trainer calls directly; ``write_export`` is ``charbot export``.
Replies are read in (parent, id) order through two server-side cursors
(:func:`storage.feedback.iter_feedback`), turned into records a sibling group at a time
(:mod:`training.records`), cleaned (:mod:`training.cleaning`), de-duplicated, and written
one line each with sorted keys — the same database gives the same bytes every time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import groupby
from typing import Any, TextIO

from sqlalchemy import Connection, Engine
from tqdm import tqdm

from storage.feedback import Selection, count_feedback, iter_feedback
from storage.votes import VoteRule
from training.cleaning import Cleaner, Report
from training.records import FORMATS, build

__all__ = ["FORMATS", "Selection", "VoteRule", "dumps", "iter_records", "write_export"]

EXCLUDED = "excluded by a reviewer"
DUPLICATE = "exact duplicate"


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line: sorted keys, UTF-8 as is, so equal records are equal bytes."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def fingerprint(record: dict[str, Any]) -> bytes:
    """What makes two records the same training example (everything but ``meta``)."""
    body = {key: value for key, value in record.items() if key != "meta"}
    return hashlib.blake2b(dumps(body).encode(), digest_size=16).digest()


def iter_records(
    source: Connection | Engine | Any,
    fmt: str,
    selection: Selection = Selection(),  # noqa: B008 - frozen
    *,
    votes: VoteRule = VoteRule(),  # noqa: B008 - frozen
    cleaners: dict[str, Cleaner] | None = None,
    report: Report | None = None,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """The ``fmt`` records of the selected feedback, cleaned and de-duplicated, in a stable
    order. ``source`` is a connection, an engine or a :class:`~storage.store.Store` (read
    through its engine on the calling thread). ``cleaners`` maps a lower-case character
    name to its rules ("" for everyone else); ``report`` collects what each rule removed.
    """
    if not isinstance(source, Connection):
        engine = getattr(source, "engine", source)
        with engine.connect() as conn:
            yield from iter_records(
                conn,
                fmt,
                selection,
                votes=votes,
                cleaners=cleaners,
                report=report,
                progress=progress,
            )
        return
    conn = source
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    report = report if report is not None else Report()
    cleaners = cleaners or {}
    default = cleaners.get("", Cleaner())
    # 16 bytes per kept record: a hundred thousand records cost a few MB.
    seen: set[bytes] = set()
    total = count_feedback(conn, selection) if progress else None
    rows = tqdm(
        iter_feedback(conn, selection),
        total=total,
        desc=f"export {fmt}",
        unit="reply",
        disable=not progress,
        mininterval=0.5,
    )
    for _parent, group in groupby(rows, key=lambda row: row.parent_id):
        for built in build(fmt, list(group), votes):
            report.read += 1
            if built.skipped:
                report.removed[built.skipped] += 1
                continue
            if built.excluded:
                report.removed[EXCLUDED] += 1
                continue
            record = built.record
            if fmt != "review":  # a person reads the review file as it was said
                character = str(record["meta"]["character"]).lower()
                record = cleaners.get(character, default).apply(record, report)
                if record is None:
                    continue
            key = fingerprint(record)
            if key in seen:
                report.removed[DUPLICATE] += 1
                continue
            seen.add(key)
            report.kept += 1
            yield record


def write_export(
    conn: Connection,
    fmt: str,
    out: TextIO,
    selection: Selection = Selection(),  # noqa: B008 - frozen
    *,
    votes: VoteRule = VoteRule(),  # noqa: B008 - frozen
    cleaners: dict[str, Cleaner] | None = None,
    progress: bool = True,
) -> Report:
    """Write ``fmt`` records as JSONL to ``out``, one line each; return what was done."""
    report = Report()
    records = iter_records(
        conn, fmt, selection, votes=votes, cleaners=cleaners, report=report, progress=progress
    )
    for record in records:
        out.write(dumps(record))
    return report
