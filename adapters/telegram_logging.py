"""Keeps the bot token out of logs.

The token is part of every Bot API URL (``https://api.telegram.org/bot<token>/sendMessage``).
httpx logs each request URL at INFO, python-telegram-bot logs the API URL at DEBUG when a Bot
is built, and some of its exceptions quote the token. A filter on those libraries' loggers
rewrites any record that contains the token before a handler sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

REDACTED = "<telegram-token>"
# Loggers that see request URLs or the token. Their children (telegram.ext.Updater,
# httpcore.http11, ...) are found by prefix, because a filter on a logger applies only to
# records logged on that very logger, not to those propagating up from its children.
_PREFIXES = ("telegram", "httpx", "httpcore")


class TokenRedactor(logging.Filter):
    """Replaces the token (and its secret half, after the colon) in log records."""

    def __init__(self, token: str) -> None:
        super().__init__()
        secret = token.split(":", 1)[-1]
        # Longest first, so the whole token is replaced before its secret half is looked for.
        self._secrets = sorted({s for s in (token, secret) if len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_text is None:
            # Format the traceback now (handlers reuse exc_text) so a token in an exception
            # message is redacted too.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install_redactor(token: str) -> Callable[[], None]:
    """Attach a TokenRedactor to every existing logger of httpx, httpcore and telegram.

    Call it after importing telegram.ext (its loggers exist from import time) and before
    building the Bot. Returns a function that removes the filter again.
    """
    redactor = TokenRedactor(token)
    manager = logging.Logger.manager
    names = set(_PREFIXES) | {
        name
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in _PREFIXES
    }
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for logger in loggers:
        logger.addFilter(redactor)

    def remove() -> None:
        for logger in loggers:
            logger.removeFilter(redactor)

    return remove
