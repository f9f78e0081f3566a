"""versions pages of the studio."""

from __future__ import annotations

ROUTES: list = []
