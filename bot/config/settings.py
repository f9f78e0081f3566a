"""The typed, frozen settings a config.toml becomes: one dataclass per section, and
:class:`Config`, the whole of it. Defaults here are the values a config that leaves a key
out gets (tests/test_config.py keeps the shipped config.toml's [model] equal to them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bot.characters import Character
from engine import EngineSettings
from storage.settings import StorageSettings


@dataclass(frozen=True, slots=True)
class ModelSettings(EngineSettings):
    """[model]: the engine's settings (engine.EngineSettings: backend, base model, serving),
    plus the prompt's knowledge budget and the default sampling settings."""

    # Sampling defaults: config.toml's, tuned on benchmarks/persona.py (docs/persona.md).
    max_new_tokens: int = 160
    temperature: float = 0.5
    top_p: float = 0.9
    repetition_penalty: float = 1.3  # > 1 discourages the reply repeating itself
    knowledge_tokens: int = 192  # of context_tokens, for lorebook entries and retrieved knowledge


@dataclass(frozen=True, slots=True)
class BotSettings:
    """[bot]: running and stopping (`charbot run`)."""

    shutdown_grace_s: float = 10.0  # on SIGTERM/Ctrl-C: how long replies may finish
    answer_backlog_minutes: float = 10.0  # after a restart: older unanswered messages skipped
    max_replies: int = 16  # replies written at once over all chats (benchmarks/intake.py)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """[limits]: how much of the bot one person may use (docs/limits.md). Beyond a limit a
    message is stored but not answered, and the person is told once per window; admins are
    exempt. 0 means no limit. Groups get the first pair, private chats the second."""

    enabled: bool = True
    messages_per_minute: int = 6  # answered messages per person per minute, in a group
    private_messages_per_minute: int = 20  # the same in a private chat
    tokens_per_day: int = 20_000  # reply tokens per person per UTC day, from a group
    private_tokens_per_day: int = 50_000  # the same from a private chat
    replies_per_chat: int = 2  # replies being written at once in one chat (its threads too)

    def per_minute(self, private: bool | None) -> int:
        """Answered messages a minute; ``private`` None (not known) gets the group's."""
        return self.private_messages_per_minute if private else self.messages_per_minute

    def per_day(self, private: bool | None) -> int:
        return self.private_tokens_per_day if private else self.tokens_per_day


LIMIT_PLATFORMS = ("console", "discord", "telegram", "web")


@dataclass(frozen=True, slots=True)
class LimitRules:
    """[limits] with its overrides, each a table of some of its keys, applied over the one
    before: [limits.PLATFORM], then [limits.characters.NAME], then
    [limits.chats."PLATFORM:CHAT_ID"] (the most specific wins)."""

    base: LimitsSettings = field(default_factory=LimitsSettings)
    platforms: dict[str, dict[str, object]] = field(default_factory=dict)  # by platform
    characters: dict[str, dict[str, object]] = field(default_factory=dict)  # lower-case name
    chats: dict[str, dict[str, object]] = field(default_factory=dict)  # "platform:chat_id"

    def settings_for(
        self, platform: str, chat_id: str, character: str | None = None
    ) -> LimitsSettings:
        """The limits that apply to one message in ``platform``'s ``chat_id``, answered by
        ``character`` (None: the chat's own, as for replies_per_chat)."""
        settings = self.base
        layers = [
            self.platforms.get(platform),
            self.characters.get(character.lower()) if character else None,
            self.chats.get(f"{platform}:{chat_id}"),
        ]
        for layer in layers:
            if layer:
                settings = replace(settings, **layer)  # type: ignore[arg-type]
        return settings


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """[console]: the terminal chat."""

    enabled: bool = True  # started by `charbot run` only when no platform is enabled
    user_name: str = "User"


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    """[discord]. The token is read from the environment variable named by token_env."""

    enabled: bool = False
    token_env: str = "DISCORD_TOKEN"
    allowed_guilds: tuple[str, ...] = ()  # empty = all
    allowed_channels: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    channel_characters: dict[str, str] = field(default_factory=dict)  # channel id -> name
    use_webhooks: bool = True
    api_base_url: str | None = None  # e.g. http://127.0.0.1:8080/api/v10 (tests, proxies)
    gateway_url: str | None = None  # e.g. ws://127.0.0.1:8080/
    # Sharding (docs/discord.md): the bot's guilds split over shard_count gateway
    # connections; this process runs shard_ids (empty: all of them). None: one connection.
    shard_count: int | None = None
    shard_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """[telegram]. The token is read from the environment variable named by token_env."""

    enabled: bool = False
    token_env: str = "TELEGRAM_TOKEN"
    allowed_chats: tuple[str, ...] = ()  # empty = all
    allowed_users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    default_character: str | None = None
    base_url: str | None = None  # a self-hosted Bot API server (and tests), ".../bot"


@dataclass(frozen=True, slots=True)
class WebSettings:
    """[web]: the studio, a local web app (adapters/web). Any host but 127.0.0.1 needs the
    admin password in the environment variable named by password_env."""

    enabled: bool = False  # also serve it inside `charbot run`
    host: str = "127.0.0.1"
    port: int = 8765
    password_env: str | None = None  # the admin password's environment variable (never a value)
    public_chat: bool = False  # with a password: the chat open to all, metered per address
    user_name: str = "User"  # the name web chat messages are stored under


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """[loop]: how a canary is judged (`charbot loras compare`, docs/rollout.md): each
    version's 👍 rate as a Beta posterior over first reactions, at most
    ``max_votes_per_person_day`` of one person's votes a day."""

    max_votes_per_person_day: int = 20  # a person's further votes that day are not counted
    promote_min_ratings: int = 100  # the candidate's counted ratings before it can win
    promote_min_people: int = 10  # from this many different people
    promote_probability: float = 0.95  # P(candidate better) at least this
    promote_max_loss: float = 0.005  # expected loss of shipping it (👍 rate) at most this
    rollback_min_ratings: int = 30  # the candidate's counted ratings before it can lose
    rollback_probability: float = 0.95  # P(candidate worse) at least this
    max_days: float = 14.0  # then stop, keeping the current version
    samples: int = 20000  # posterior draws (fixed seed: the same data, the same figures)
    min_swipe_pairs: int = 10  # paired swipe choices before they may block a promotion
    # Divide each side's counts by its design effect: one person's votes are alike, so a few
    # eager voters are not taken for many people (docs/rollout.md has the measured effect).
    per_person: bool = True


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """[memory]: what a character remembers beyond the history that fits in the prompt —
    recalled old messages of the chat, the conversation's rolling summary, and notes about
    each person (docs/memory.md). Off, prompts are exactly as without memory."""

    enabled: bool = True
    recall_tokens: int = 160  # of context_tokens, for old messages recalled by similarity
    recall_top_k: int = 4  # recalled messages at most
    recall_min_score: float = 0.4  # cosine similarity below which an old message is unrelated
    summarize_every: int = 20  # new messages before the summary is extended; 0: no summary
    summary_tokens: int = 160  # the longest summary, and its share of context_tokens
    notes_tokens: int = 96  # of context_tokens, for what the character knows about people
    note_chars: int = 300  # the longest note /remember takes
    max_notes: int = 50  # per person and character; the oldest go first
    extract: str = "rules"  # notes from what people say: "rules" | "model" | "off"
    # A model of its own for summaries and extraction: an OpenAI-compatible server
    base_url: str | None = None  # e.g. "http://127.0.0.1:8000/v1"; unset: the bot's model
    model: str | None = None  # the served model's name
    api_key_env: str | None = None  # environment variable holding its API key
    cache_mb: int = 256  # recall's vectors kept in memory over all chats (LRU)


@dataclass(frozen=True, slots=True)
class SceneSettings:
    """[scenes]: who speaks next when several characters are in a chat's scene
    (docs/scenes.md). A chat with one character is answered by it whatever the policy."""

    policy: str = "natural"  # "natural" | "list" | "pooled" | "manual"
    max_chain: int = 2  # replies characters may add to each other before people speak
    seed: int | None = None  # fixed talkativeness rolls (tests, benchmarks); None: random
    chats: dict[str, str] = field(default_factory=dict)  # "platform:chat_id" -> its policy


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """[training] (and [training.characters.NAME] overrides): LoRA fine-tuning of a character.

    The defaults train a few hundred pairs in minutes on a 2-core CPU and were checked with
    benchmarks/feedback_loop.py: small models need all linear layers and enough steps.
    """

    method: str = "sft"  # "sft" | "dpo" | "kto"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("all-linear",)
    epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 4
    gradient_accumulation: int = 1
    weight_decay: float = 0.0
    max_length: int = 512  # tokens per example; longer ones are cut
    seed: int = 0
    val_fraction: float = 0.1  # held out when the dataset has no val.jsonl
    early_stopping: int = 2  # bad epochs (validation loss above the best) before stopping
    early_stopping_tolerance: float = 0.25  # "above": by more than this fraction of the best
    min_examples: int = 3  # fewer training examples are refused
    # The recipe for a handful of corrections (docs/training.md, "The recipe"):
    knowledge_in_prompt: bool = True  # train a correction with its answer in the knowledge
    knowledge_distractors: int = 1  # other corrections beside it there, as retrieval brings
    learn_as_knowledge: bool = True  # the version's corrections become retrievable knowledge
    replay: int = 8  # the current version's own answers to everyday prompts, mixed in
    persona_replay: int = 0  # the character's knowledge facts, asked with the fact retrieved
    min_heldout: int = 20  # fewer records: train on all, validate on paraphrases
    # The gate of `train --use` and `loras use`: refuse a version worse than the current one
    max_leak_increase: float = 0.02  # leak rate up by more than this
    max_distinct_drop: float = 0.05  # distinct-reply rate down by more than this
    max_persona_drop: float = 0.1  # persona facts down by more than this
    bf16: str = "auto"  # "auto" (where the CPU has bf16) | "true" | "false"
    loras_dir: Path = Path("data/loras")  # versions: loras_dir/<character>/vNNNN-<hash>/
    datasets_dir: Path = Path("data/datasets")  # a character's base dataset
    reports_dir: Path = Path("data/reports")
    poll_seconds: float = 2.0  # how often a running bot looks for a switched version


@dataclass(frozen=True, slots=True)
class CleanSettings:
    """[clean] (and [clean.characters.NAME] additions): cleaning rules of training data,
    applied by `charbot export` and `charbot data clean` (see training/cleaning.py)."""

    exclude_words: tuple[str, ...] = ()  # whole words, any case, e.g. out-of-world words
    exclude_patterns: tuple[str, ...] = ()  # regular expressions (Python syntax)
    min_chars: int = 1  # shorter answers are removed
    max_chars: int = 0  # longer answers are removed; 0 = no limit
    scrub: tuple[str, ...] = ("email", "phone", "url", "mention")  # replaced by [email] etc.


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    model: ModelSettings
    storage: StorageSettings
    characters: tuple[Character, ...]
    default_character: str
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    web: WebSettings = field(default_factory=WebSettings)
    bot: BotSettings = field(default_factory=BotSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    scenes: SceneSettings = field(default_factory=SceneSettings)
    limits: LimitRules = field(default_factory=LimitRules)
    loop: LoopSettings = field(default_factory=LoopSettings)
    clean: CleanSettings = field(default_factory=CleanSettings)
    # Per-character [clean.characters.NAME] rules, by lower-case name; see clean_for.
    clean_overrides: dict[str, CleanSettings] = field(default_factory=dict)

    def clean_for(self, character: str) -> CleanSettings:
        """The cleaning rules of ``character``: [clean] with its own additions."""
        return self.clean_overrides.get(character.lower(), self.clean)

    training: TrainingSettings = field(default_factory=TrainingSettings)
    # Per-character [training.characters.NAME] settings, by lower-case name; see training_for.
    training_overrides: dict[str, TrainingSettings] = field(default_factory=dict)

    def training_for(self, character: str) -> TrainingSettings:
        """The training settings of ``character``: its overrides over [training]."""
        return self.training_overrides.get(character.lower(), self.training)
