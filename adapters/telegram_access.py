"""Who may talk to the bot where: the [telegram] allow-lists and admin ids, as one policy."""

from __future__ import annotations

from bot.config import TelegramSettings


class TelegramAccess:
    """Applies ``allowed_chats``, ``allowed_users`` and ``admins``; empty lists allow all.

    A group event must pass both non-empty lists. A private chat's id is the user's id; when
    ``allowed_chats`` restricts the bot, a private chat is allowed only if it is listed there
    or its user is listed in ``allowed_users``, so a bot locked to one group does not chat
    with strangers. Admins pass every list.
    """

    def __init__(self, settings: TelegramSettings) -> None:
        self._chats = frozenset(settings.allowed_chats)
        self._users = frozenset(settings.allowed_users)
        self._admins = frozenset(settings.admins)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self._admins

    @property
    def has_admins(self) -> bool:
        return bool(self._admins)

    def allows(self, chat_id: str, user_id: str, *, private: bool) -> bool:
        if self.is_admin(user_id):
            return True
        if self._users and user_id not in self._users:
            return False
        if not self._chats or chat_id in self._chats:
            return True
        return private and user_id in self._users
