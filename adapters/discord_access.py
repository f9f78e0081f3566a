"""Who may talk to the bot where: the [discord] allow-lists and admin ids, as one policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import discord

from bot.config import DiscordSettings


@dataclass(frozen=True, slots=True)
class Place:
    """Where an event happened and who caused it, as plain ids (strings, like the config)."""

    user_id: str
    guild_id: str | None = None  # None in a DM
    channel_id: str | None = None
    parent_id: str | None = None  # a thread's parent channel
    role_ids: tuple[str, ...] = ()


class AccessPolicy:
    """Applies the allow-lists. An empty list allows everything of its kind.

    Guild events must pass every non-empty list (guild, channel or the thread's parent, role,
    user). DMs have no guild, channel or roles: when any of those lists restricts the bot, a
    DM is allowed only from a user named in ``allowed_users`` or ``admins`` (or a DM channel
    named in ``allowed_channels``), so a bot locked to one server does not chat with strangers.
    Admins pass every list.
    """

    def __init__(self, settings: DiscordSettings) -> None:
        self._guilds = frozenset(settings.allowed_guilds)
        self._channels = frozenset(settings.allowed_channels)
        self._roles = frozenset(settings.allowed_roles)
        self._users = frozenset(settings.allowed_users)
        self._admins = frozenset(settings.admins)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self._admins

    def allows(self, place: Place, *, check_roles: bool = True) -> bool:
        """Whether the bot may act on an event at ``place``; ``check_roles=False`` when the
        event carries no roles (a reaction removal)."""
        if self.is_admin(place.user_id):
            return True
        if self._users and place.user_id not in self._users:
            return False
        if place.guild_id is None:
            if place.channel_id in self._channels:
                return True
            restricted = self._guilds or self._channels or self._roles
            return not restricted or place.user_id in self._users
        if self._guilds and place.guild_id not in self._guilds:
            return False
        if self._channels and not _any_in((place.channel_id, place.parent_id), self._channels):
            return False
        return not (check_roles and self._roles) or _any_in(place.role_ids, self._roles)


def _any_in(values: Iterable[str | None], allowed: frozenset[str]) -> bool:
    return any(v is not None and v in allowed for v in values)


def place_of(user_id: int, guild_id: int | None, channel: object, member: object = None) -> Place:
    """The allow-list view of an event: ids from the event, roles from ``member`` if any."""
    channel_id = getattr(channel, "id", None)
    return Place(
        user_id=str(user_id),
        guild_id=str(guild_id) if guild_id else None,
        channel_id=str(channel_id) if channel_id else None,
        parent_id=str(channel.parent_id) if isinstance(channel, discord.Thread) else None,
        role_ids=tuple(str(role.id) for role in getattr(member, "roles", ())),
    )
