"""Asking a character questions the way the bot would: a fresh one-message chat, the prompt
built by the bot's own code (persona, retrieved knowledge, the version's learnt knowledge),
answered through the serving model with the version's LoRA.

Training uses it to write replay records and paraphrase prompts; the evaluation uses it for
every set that is not a stored prompt. One code path, so what is measured is what users get.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from bot.characters import Character
from bot.config import Config
from bot.knowledge import Knowledge, with_version_knowledge
from bot.prompt import build_prompt
from engine import ChatMessages, ChatModel, GenerationRequest, LoraSpec, Sampling
from storage.records import HistoryMessage

USER = "User"  # who asks: the console's default name, as a new user's first chat has it
# Requests in flight at once: a full batch and some waiting, well under the local engine's
# max_queue (64), past which it answers Busy.
IN_FLIGHT = 32


def eval_sampling(config: Config, character: Character) -> Sampling:
    """Greedy, with the character's own length and repetition penalty: comparable runs."""
    return Sampling(
        max_new_tokens=character.max_new_tokens or config.model.max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        repetition_penalty=character.repetition_penalty or config.model.repetition_penalty,
    )


def serving_sampling(config: Config, character: Character, seed: int = 0) -> Sampling:
    """The sampling users get from the character (its own overrides over [model]'s), seeded."""
    model = config.model
    return Sampling(
        max_new_tokens=character.max_new_tokens or model.max_new_tokens,
        temperature=model.temperature if character.temperature is None else character.temperature,
        top_p=character.top_p or model.top_p,
        repetition_penalty=character.repetition_penalty or model.repetition_penalty,
        seed=seed,
    )


class Asker:
    """Builds a character's prompts and answers them with one serving model."""

    def __init__(self, config: Config, model: ChatModel, *, progress: bool = False) -> None:
        self.config = config
        self.model = model
        self.knowledge = Knowledge(
            config.model.cache_dir / "knowledge", config.model.knowledge_tokens, progress=progress
        )

    def character(self, name: str, lora_path: str | None) -> Character:
        """The configured character as it speaks with the version at ``lora_path``."""
        found = next(c for c in self.config.characters if c.name.lower() == name.lower())
        knowledge = with_version_knowledge(found.knowledge, lora_path)
        return dataclasses.replace(found, lora=lora_path, knowledge=knowledge)

    async def prompt(self, character: Character, question: str) -> ChatMessages:
        """The prompt the bot would build for ``question`` as the first message of a chat."""
        rows = [HistoryMessage(0, "user", question, None, USER)]
        notes = await self.knowledge.notes(character, [question], self._tokens)
        return build_prompt(
            self.model, character, rows, self.config.model.context_tokens, USER, notes
        )

    def _tokens(self, text: str) -> int:
        return self.model.count_tokens([{"role": "system", "content": text}])

    async def answers(
        self,
        character: Character,
        prompts: Sequence[ChatMessages],
        sampling: Sampling | None = None,
    ) -> list[str]:
        """The character's answers to ``prompts``, generated together (the scheduler batches
        them), greedy unless ``sampling`` says otherwise."""
        sampling = sampling or eval_sampling(self.config, character)
        spec = LoraSpec(character.name, character.lora) if character.lora else None
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(messages: ChatMessages) -> str:
            text = ""
            async with gate:
                request = GenerationRequest(messages, sampling, spec)
                async for chunk in self.model.stream(request):
                    text += chunk.text
            return text.strip()

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def ask(
        self, character: Character, questions: Sequence[str], sampling: Sampling | None = None
    ) -> tuple[list[ChatMessages], list[str]]:
        """(prompts, answers) for ``questions`` asked fresh."""
        prompts = [await self.prompt(character, q) for q in questions]
        return prompts, await self.answers(character, prompts, sampling)
