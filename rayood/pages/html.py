"""The parts every rayood page is built from: one self-contained HTML file that opens offline.

Images are inline PNG data URIs, the style is inline, there are no scripts, and a Content-Security-Policy forbids
the browser any request at all but those data URIs: even a value that slipped through escaping could not fetch
or run anything. Every text that comes from data (ids, sources, group names, error messages) goes through
:func:`text`; only :class:`Markup` made here is trusted.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterable

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
.verdict { font-size: 1.3em; font-weight: bold; }
.note { color: #555; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; word-break: break-all; }
td.low { background: #fdd; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 140px; font-size: 11px; word-break: break-all; }
figure img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #999; }
figure .missing { width: 128px; height: 128px; border: 1px dashed #c00; color: #c00; font-size: 10px;
  overflow: hidden; box-sizing: border-box; padding: 4px; }
.hist img { width: 480px; }
"""


class Markup(str):
    """HTML made by this package, inserted as it is; any other value is escaped."""


def text(value: object) -> Markup:
    """``value`` as HTML text: markup in it is shown, never interpreted."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(uri: str, alt: object) -> Markup:
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("a page embeds only PNG data URIs")
    return Markup(f'<img src="{uri}" alt="{text(alt)}">')


def table(header: Iterable[object], rows: Iterable[Iterable[object]]) -> Markup:
    """A table of values, escaped; a cell made by :func:`cell` (one that carries a class) goes in as it is."""
    head = "".join(f"<th>{text(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(c if isinstance(c, Cell) else f"<td>{text(c)}</td>" for c in cells) + "</tr>" for cells in rows
    )
    return Markup(f"<table><tr>{head}</tr>{body}</table>")


class Cell(Markup):
    """A whole ``<td>`` element, made by :func:`cell`."""


def cell(value: object, css_class: str | None = None) -> Cell:
    """A table cell that carries a class (e.g. a shaded p-value)."""
    attribute = f' class="{text(css_class)}"' if css_class else ""
    return Cell(f"<td{attribute}>{text(value)}</td>")


def gallery(rows: list[dict], caption: Callable[[dict], list[object]], empty: str) -> Markup:
    """One figure per row: its ``thumbnail`` (a data URI), or a box saying why there is none (``missing``), and the
    caption's lines under it."""
    if not rows:
        return Markup(f'<p class="note">{text(empty)}</p>')
    figures = []
    for row in rows:
        picture = (
            image(row["thumbnail"], row["id"])
            if row.get("thumbnail")
            else f'<div class="missing">no image: {text(row.get("missing", "not read"))}</div>'
        )
        lines = "<br>".join(text(line) for line in caption(row))
        figures.append(f"<figure>{picture}<figcaption>{lines}</figcaption></figure>")
    return Markup(f'<div class="grid">{"".join(figures)}</div>')


def document(title: str, parts: Iterable[object]) -> str:
    """The whole page: ``parts`` in order (escaped unless :class:`Markup`)."""
    head = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{text(title)}</title><style>{STYLE}</style></head><body>"
    )
    return "\n".join([head, *(text(part) for part in parts), "</body></html>"])
