"""A single self-contained HTML page (``templates/dashboard.html``): tables as HTML, figures as base64 data URIs,
inline CSS, no scripts and no external resources, so it opens from disk (or an e-mail attachment) without a
server."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def img_tag(png: str | Path, alt: str) -> str:
    """The PNG inline (a data URI) at its pixel width; CSS caps it at the page width and keeps it ≥720 px."""
    raw = Path(png).read_bytes()
    width = int.from_bytes(raw[16:20], "big")  # from the IHDR chunk
    data = base64.b64encode(raw).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(alt)}">'


def figure(png: str | Path, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def page(title: str, meta: str, body: list[str]) -> str:
    """The page from ``templates/dashboard.html`` (Jinja2, autoescaped: the title and meta line are text; the body's
    parts are the report's own HTML)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("promptlab.report", "templates"), autoescape=select_autoescape(["html"]))
    return env.get_template("dashboard.html").render(title=title, meta=meta, body=body)


def scroll(table_html: str) -> str:
    return f'<div class="scroll">{table_html}</div>'


def section(title: str, *parts: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(title)}</h{level}>\n" + "\n".join(parts)


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'
