"""MkDocs hook: show the Sphinx roles of the package's docstrings as plain code.

The docstrings are numpydoc with Sphinx roles (``:class:`~infl_array.meta.Compression```),
which Markdown renders as ``:class: <code>~infl_array.meta.Compression</code>``. This hook
turns each into ``<code>Compression</code>`` (``~`` keeps the last part, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):\s*<code>(~?)([^<]+)</code>")


def _plain(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Replace the roles in a rendered page."""
    return _ROLE.sub(_plain, html)
