"""The frame both HTML renderings share (the report's and ``evaluate``'s): one self-contained page,
inline CSS, no scripts, no external assets, and every user string escaped by ``markup_text``."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

# Control characters XML 1.0 cannot hold (tab, newline and carriage return it can): an inline SVG
# holding one would not parse.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# The look every page has; a page adds the classes only it uses (``page(extra_style=...)``).
BASE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 90rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
p.note { color: #555; font-size: 0.85rem; }
"""


def markup_text(text: object) -> str:
    """``text`` safe inside HTML and SVG (XML) text and attributes: escaped, and the control
    characters XML 1.0 cannot hold shown as U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", str(text)))


def page(title: str, body: Iterable[str], *, extra_style: str = "") -> str:
    """The whole document: ``title`` (plain text, escaped here) in the head, ``body``'s lines (markup,
    already escaped) inside ``<body>``, ``BASE_STYLE`` plus ``extra_style`` inline."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{markup_text(title)}</title>", f"<style>{BASE_STYLE}{extra_style}</style>",
                      "</head>", "<body>", *body, "</body>", "</html>", ""])
