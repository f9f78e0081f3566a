"""The terminal chat in a real pseudo-terminal: Ctrl-C stops a reply (kept, cancelled) and a
second quits, a pasted block is one message, arrow keys edit and recall instead of being
sent as text."""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    """The parent side of a pty running the console."""

    def __init__(self, database: Path) -> None:
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONPATH": str(ROOT)}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            os.chdir(ROOT)
            os.execve(
                sys.executable,
                [sys.executable, "-m", "tests.console_pty_child", str(database)],
                env,
            )
        self.output = ""

    def read_until(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {text!r} in the terminal; it shows:\n{self.output[-2000:]}"
                )
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        found = self.output
        self.output = self.output[self.output.index(text) + len(text) :]
        return found

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("the console did not quit")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ctrl_c_paste_and_history_in_a_pseudo_terminal(tmp_path: Path) -> None:
    database = tmp_path / "chat.db"
    term = Terminal(database)
    term.read_until("Sam>")
    term.type("hello\r")
    shown = term.read_until("Aria: word word word")
    term.type("\x03")  # Ctrl-C while the reply is being written
    shown += term.read_until("[stopped]")
    # The notice ends the reply's own line, after its last shown piece; no "^C" is echoed
    # (the terminal echoes the bare control character, which shows nothing).
    assert re.search(r"Aria: word( word)* \[stopped\]", shown.replace("\x03", "")), shown
    assert "^C" not in shown
    term.read_until("Sam>")
    # A pasted block arrives between bracketed-paste markers: one message, not two.
    term.type("\x1b[200~first line\nsecond line\x1b[201~\r")
    term.read_until("Got it.")
    term.read_until("Sam>")
    term.type("\x1b[A\r")  # arrow up recalls the last message; it is not sent as text
    term.read_until("Got it.")
    term.read_until("Sam>")
    term.type("\x03")
    term.read_until("Ctrl-C again to quit")
    term.type("\x03")
    assert term.wait() == 0

    rows = (
        sqlite3.connect(database)
        .execute("SELECT role, text, error FROM messages ORDER BY id")
        .fetchall()
    )
    assert [r[:2] for r in rows if r[0] == "user"] == [
        ("user", "hello"),
        ("user", "first line\nsecond line"),
        ("user", "first line\nsecond line"),
    ]
    cancelled = rows[1]
    assert cancelled[0] == "assistant" and cancelled[2] == "cancelled"
    assert cancelled[1].startswith("word word") and len(cancelled[1].split()) < 400
    assert not any("\x1b" in r[1] for r in rows)


def test_piped_lines_stay_one_message_each_and_lose_escape_codes() -> None:
    from adapters.console import clean_line

    assert clean_line("hi\x1b[A there\x07") == "hi there"
    assert clean_line("two\r\nlines") == "two\nlines"
