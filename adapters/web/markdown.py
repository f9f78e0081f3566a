"""Reports written as markdown (``report.md``, ``stats.md``) shown as HTML in the studio.

Raw HTML inside the markdown is escaped, not passed through, and links keep to safe
schemes (markdown-it's own check): a report quotes people's messages, and those are text.
"""

from __future__ import annotations

from functools import cache

from markdown_it import MarkdownIt
from markupsafe import Markup


@cache
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def to_html(markdown: str) -> Markup:
    """``markdown`` as HTML that is safe to put in a page as it is."""
    return Markup(_parser().render(markdown))
