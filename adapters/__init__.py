"""Platform edges. Only this package imports a platform SDK (discord.py, python-telegram-bot)."""
