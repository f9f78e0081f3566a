"""A terminal chat: type, or pipe in one message per line, to talk to a character.

Typed at a terminal, it behaves like a terminal program (prompt_toolkit): line editing and
history with the arrow keys, a pasted block of lines is one message (bracketed paste),
Ctrl-C stops the reply being written (stored, marked cancelled) and a second Ctrl-C quits,
as does Ctrl-D. Piped in, every line is one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import threading
import uuid
from typing import ClassVar, TextIO

from adapters.base import PlatformAdapter
from bot.characters import Character
from bot.core import Core
from bot.errors import CharbotError
from bot.limits import quota_command
from bot.lora_admin import COMMAND, OLD_COMMAND, RENAMED, lora_command
from bot.memory.commands import COMMANDS as MEMORY_COMMANDS
from bot.memory.commands import memory_command
from bot.memory.notes import Person
from bot.messages import Inbound
from bot.reply import ReplyTarget
from bot.scene_commands import SCENE_HELP, scene_command
from engine.errors import EngineError

HELP = """Commands:
  /characters        list the characters
  /character NAME    NAME answers from now on instead (the conversation goes
                     on; /new first for a fresh one)
  /join NAME         NAME joins the scene too: it answers when named, and answers the
                     others (see [scenes] policy)
  /leave NAME        NAME leaves the scene
  /scene             who is in the scene
  /new, /reset       start a fresh conversation
  /good, /bad        rate the last reply 👍 or 👎
  /fix TEXT          give a better answer for the last reply
  /regen             a new version of the last reply
  /prev, /next       page through the versions of the last reply (the one shown is kept)
  /remember TEXT     tell the character something to remember about you (--public TEXT:
                     in every chat, not only this one)
  /memory            what the character remembers about you
  /forget N|all      make the character forget note N, or everything about you
  /quota             how many answers and reply tokens you have left
  /lora [VERSION]    list the current character's LoRA versions, or switch (base: none;
                     rollback: the previous one); /lora PATH loads a directory for now
  /help              this list
  /quit              leave (end of input does too)"""


# Terminal control sequences (arrow keys typed where no line editor runs, colour codes in
# pasted text) and other control characters never belong in a message.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (newlines stay)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def _quiet_ctrl_c(stdin: TextIO):  # type: ignore[no-untyped-def]
    """Stop the terminal echoing Ctrl-C as "^C" while a reply is written (the reply's line
    then reads "Mara: I [stopped]"); returns what restores the terminal's setting."""
    try:
        import termios
    except ImportError:  # Windows
        return lambda: None
    try:
        fd = stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (AttributeError, OSError, ValueError, termios.error):  # not a terminal
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)

    return restore


def _new_id() -> str:
    # Unique across runs: reply parts are keyed by (platform, chat, id) in the database.
    return uuid.uuid4().hex[:16]


class ConsoleTarget(ReplyTarget):
    """Prints a reply as it streams: the name once, then each new piece of text."""

    max_chars: ClassVar[int] = 1_000_000  # a terminal has no length limit
    edit_interval: ClassVar[float] = 0.0  # show every token

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._shown: dict[str, str] = {}
        # Ctrl-C stopped this reply: " [stopped]" goes after what was shown of it, on its line.
        self.stopped = False
        self.marked = False

    async def send(self, text: str, *, character: Character) -> str:
        message_id = _new_id()
        self.out.write(f"{character.name}: {text}")
        self.out.flush()
        self._shown[message_id] = text
        return message_id

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        shown = self._shown.get(message_id, "")
        # Streaming only ever appends; print the new tail.
        self.out.write(text[len(shown) :] if text.startswith(shown) else "\n" + text)
        self.out.flush()
        self._shown[message_id] = text

    async def finished(self, message_ids: list[str], text: str, *, character: Character) -> None:
        self.out.write(" [stopped]\n" if self.stopped else "\n")
        self.marked = self.stopped
        self.out.flush()

    def mark_stopped(self) -> None:
        """After the reply: " [stopped]" if Ctrl-C stopped it and ``finished`` did not say so
        (nothing of it was shown yet)."""
        if self.stopped and not self.marked:
            self.out.write("[stopped]\n")
            self.out.flush()
            self.marked = True

    async def notice(self, text: str) -> str | None:
        self.out.write(f"\n[{text}]\n")
        self.out.flush()
        return None


class ConsoleAdapter(PlatformAdapter):
    """The terminal chat. ``run()`` returns at /quit or end of input."""

    platform: ClassVar[str] = "console"

    def __init__(
        self,
        core: Core,
        *,
        user_name: str = "User",
        character: str | None = None,
        chat_id: str = "console",
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.core = core
        self.user_name = user_name
        self.character = character
        self.chat_id = chat_id
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.last_reply: str | None = None  # platform id of the last reply's first part
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self._ctrl_c = 0  # Ctrl-C presses since the last message was sent
        self._quitting = False
        self._writing: ConsoleTarget | None = None  # the reply being written, for Ctrl-C
        self.greeted = False  # the last thing shown is a greeting (nothing to rate yet)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        try:
            if self.character:
                await self.core.set_character(self.platform, self.chat_id, self.character)
            current = await self.core.current_character(self.platform, self.chat_id)
            interactive = self.stdin.isatty() and self.out.isatty()
            if interactive:
                note = self._chosen_note(current)
                self.say(f"Talking to {current.name}{note}. /help lists the commands.")
                if current.greeting:
                    await self.greet()
                echo = _quiet_ctrl_c(self.stdin)
                try:
                    async for line in self._typed():
                        if not await self.handle_line(line) or self._quitting:
                            break
                finally:
                    self._ignore_ctrl_c()
                    echo()
            else:
                async for line in self._lines(prompt=""):
                    if not await self.handle_line(line):
                        break
        finally:
            self.done.set()

    def _chosen_note(self, current: Character) -> str:
        """Why it is not default_character: this chat chose another one earlier."""
        default = self.core.default_character
        if self.character or current.name == default.name:
            return ""
        return (
            f" (chosen here with /character; default_character {default.name} answers chats"
            f" that never chose: /character {default.name} switches)"
        )

    def _catch_ctrl_c(self) -> None:
        """Between two prompts (while a reply is written, and while the next prompt starts)
        the terminal sends SIGINT for Ctrl-C: it stops the reply, and a second quits. At
        the prompt, prompt_toolkit reads Ctrl-C as a key; it takes SIGINT over while it
        reads and drops this handler when it returns, so this is called after each prompt
        — at once, before anything is printed, or a quick second Ctrl-C would find no
        handler and kill the program."""
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; other threads
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._interrupt)

    def _ignore_ctrl_c(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def _interrupt(self) -> None:
        self._ctrl_c += 1
        if self._ctrl_c >= 2:
            self._quitting = True
        if self.core.cancel(self.platform, self.chat_id) and self._writing is not None:
            # Said after the reply's last shown piece (ConsoleTarget.finished), not here: a
            # piece already on its way would print after the notice.
            self._writing.stopped = True

    async def _typed(self):  # type: ignore[no-untyped-def]
        """Messages typed at the terminal, with editing, history and bracketed paste."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        session: PromptSession[str] = PromptSession(history=InMemoryHistory())
        while not self._quitting:
            try:
                # Awaited here, not in a task of its own: a KeyboardInterrupt escaping a task
                # would stop the event loop.
                text = await session.prompt_async(f"{self.user_name}> ")
            except KeyboardInterrupt:
                self._catch_ctrl_c()
                self._ctrl_c += 1
                if self._ctrl_c >= 2:
                    return
                self.say("[Ctrl-C again to quit]")
                continue
            except EOFError:
                return
            self._catch_ctrl_c()
            self._ctrl_c = 0
            yield text

    async def greet(self) -> None:
        """Show the current character's greeting; it is stored as a turn of the conversation."""
        await self.core.greet(self.platform, self.chat_id, None, self.user_name, self._target())
        self.out.write("\n")
        self.last_reply = None  # the greeting is not a written reply: nothing to rate
        self.greeted = True

    def _target(self) -> ConsoleTarget:
        return ConsoleTarget(self.out)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def _lines(self, prompt: str):  # type: ignore[no-untyped-def]
        """Lines from stdin, read in a daemon thread so a blocked read never holds up exit."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def reader() -> None:
            for line in self.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=reader, name="console-stdin", daemon=True).start()
        while True:
            if prompt:
                self.out.write(prompt)
                self.out.flush()
            line = await queue.get()
            if line is None:
                return
            yield line.rstrip("\r\n")

    async def handle_line(self, line: str) -> bool:
        """Handle one line (or a pasted block); False means quit."""
        line = clean_line(line)
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            try:
                return await self.command(command.lower(), argument.strip())
            except (CharbotError, EngineError) as exc:
                self.say(f"[{exc}]")
                return True
        target = self._writing = ConsoleTarget(self.out)
        try:
            result = await self.core.handle(
                Inbound(
                    platform=self.platform,
                    chat_id=self.chat_id,
                    message_id=_new_id(),
                    author_id=self.user_name,
                    author_name=self.user_name,
                    text=line,
                    private=True,
                ),
                target,
            )
        except (CharbotError, EngineError) as exc:
            self.say(f"[{exc}]")
            return True
        finally:
            self._writing = None
            target.mark_stopped()
        if result is not None and result.message_ids:
            self.last_reply = result.message_ids[0]
            self.greeted = False
        return True

    async def command(self, command: str, argument: str) -> bool:
        core, platform, chat = self.core, self.platform, self.chat_id
        if command in ("/quit", "/exit"):
            return False
        if command == "/help":
            self.say(HELP)
        elif command == "/characters":
            current = await core.current_character(platform, chat)
            for c in core.characters:
                marker = "*" if c.name == current.name else " "
                self.say(f"{marker} {c.name} — {c.description[:70]}")
        elif command == "/character":
            if not argument:
                self.say("[usage: /character NAME]")
            else:
                before = await core.current_character(platform, chat)
                character = await core.set_character(platform, chat, argument)
                if character.name == before.name:
                    self.say(f"[already talking to {character.name}]")
                else:
                    # The conversation goes on: the new character answers what was said.
                    self.say(
                        f"[{character.name} answers from now on; /new starts a fresh conversation]"
                    )
                    if character.greeting:
                        await self.greet()
        elif command[1:] in SCENE_HELP:
            self.say(f"[{await scene_command(core, platform, chat, command[1:], argument)}]")
        elif command in ("/new", "/reset"):
            await core.reset(platform, chat)
            self.last_reply = None
            self.greeted = False
            current = await core.current_character(platform, chat)
            self.say(f"[new conversation with {current.name}]")
            if current.greeting:
                await self.greet()
        elif command in (f"/{COMMAND}", f"/{OLD_COMMAND}"):
            if command == f"/{OLD_COMMAND}":
                self.say(f"[{RENAMED}]")
            await self.lora(argument)
        elif command[1:] in MEMORY_COMMANDS:
            await self.memory(command[1:], argument)
        elif command == "/quota":
            current = await core.current_character(platform, chat)
            answer = await quota_command(
                core,
                platform,
                chat,
                self.user_name,
                private=True,
                exempt=False,
                character=current.name,
            )
            self.say(f"[{answer}]")
        elif command in ("/prev", "/next"):
            await self.page(-1 if command == "/prev" else 1)
        elif command in ("/good", "/bad", "/fix", "/regen"):
            await self.feedback(command, argument)
        else:
            self.say(f"[unknown command {command}; /help lists them]")
        return True

    async def lora(self, argument: str) -> None:
        """/lora: versions by name (list, switch, roll back; persisted, see
        bot/lora_admin.py), or a LoRA directory by path for this run."""
        core, platform, chat = self.core, self.platform, self.chat_id
        current = await core.current_character(platform, chat)
        if core.loras is not None and "/" not in argument:
            self.say(f"[{await lora_command(core, current.name, argument, 'console')}]")
        elif not argument:
            self.say(f"[usage: /{COMMAND} PATH, or /{COMMAND} none]")
        else:
            path = None if argument.lower() == "none" else argument
            version = await core.switch_lora(current.name, path)
            self.say(f"[{current.name} now uses {f'LoRA {version}' if path else 'no LoRA'}]")

    async def memory(self, command: str, argument: str) -> None:
        """/remember, /memory, /forget (bot.memory.commands): the console is a private chat."""
        core, platform, chat = self.core, self.platform, self.chat_id
        current = await core.current_character(platform, chat)
        person = Person(platform, self.user_name, self.user_name, chat, private=True)
        self.say(f"[{await memory_command(core.memory, current.name, person, command, argument)}]")

    async def feedback(self, command: str, argument: str) -> None:
        if command == "/fix" and not argument:
            self.say("[usage: /fix TEXT — the reply the character should have given instead]")
            return
        if self.last_reply is None:
            if self.greeted:
                self.say(
                    "[that is the greeting, not a written reply: nothing to rate, fix or "
                    "write again yet; say something first]"
                )
            else:
                self.say("[no reply yet in this session]")
            return
        core, platform, chat, reply = self.core, self.platform, self.chat_id, self.last_reply
        if command in ("/good", "/bad"):
            await core.vote(platform, chat, reply, self.user_name, 1 if command == "/good" else -1)
            self.say("[rated 👍]" if command == "/good" else "[rated 👎]")
        elif command == "/fix":
            await core.correct(platform, chat, reply, self.user_name, argument)
            self.say("[correction saved]")
        else:
            target = self._writing = ConsoleTarget(self.out)
            try:
                result = await core.regenerate(platform, chat, reply, target)
            finally:
                self._writing = None
                target.mark_stopped()
            if result is not None and result.message_ids:
                self.last_reply = result.message_ids[0]
                shown = await core.swipes.regenerated(platform, chat, self.last_reply)
                if shown is not None and shown.count > 1:
                    self.say(f"[{shown.index + 1}/{shown.count}: /prev and /next page through]")

    async def page(self, step: int) -> None:
        """Show the previous or next version of the last reply; the conversation goes on
        from the one shown."""
        if self.last_reply is None:
            self.say("[no reply yet in this session]")
            return
        shown = await self.core.swipes.page(self.platform, self.chat_id, self.last_reply, step)
        if shown is None or shown.count < 2:
            self.say("[only one version of that reply; /regen writes another]")
            return
        if not shown.moved:
            where = "last" if step > 0 else "first"
            more = "/regen writes another" if step > 0 else "/next goes forward"
            self.say(f"[{shown.index + 1}/{shown.count}: that is the {where} version; {more}]")
            return
        name = shown.sibling.character
        self.say(f"[{shown.index + 1}/{shown.count}] {name}: {shown.sibling.text}")
