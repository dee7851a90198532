"""A single self-contained HTML page: tables as HTML, figures as base64 data URIs, inline CSS, no scripts
and no external resources, so it opens from disk (or an e-mail attachment) without a server."""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1440px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
h3 { margin-top: 24px; font-size: 16px; }
.meta, caption, figcaption, .note { color: #555; font-size: 12.5px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; padding-top: 6px; max-width: 900px; }
th, td { padding: 3px 8px; text-align: right; border-bottom: 1px solid #e5e5e5; white-space: nowrap; }
th.l, td.l { text-align: left; }
thead th { border-bottom: 2px solid #444; } tbody tr:nth-child(even) { background: #f7f7f7; }
.figs { display: flex; flex-direction: column; gap: 24px; }  /* one figure per row */
.scroll { overflow-x: auto; } figure { margin: 0; }
figure img { display: block; max-width: 100%; min-width: min(720px, 100%); height: auto;
             border: 1px solid #eee; }
.warn { color: #a33; }
"""


def img_tag(png: str | Path, alt: str) -> str:
    """The PNG inline (a data URI) at its pixel width; CSS caps it at the page width and keeps it ≥720 px."""
    raw = Path(png).read_bytes()
    width = int.from_bytes(raw[16:20], "big")  # from the IHDR chunk
    data = base64.b64encode(raw).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(alt)}">'


def figure(png: str | Path, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def page(title: str, meta: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def scroll(table_html: str) -> str:
    return f'<div class="scroll">{table_html}</div>'


def section(title: str, *parts: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(title)}</h{level}>\n" + "\n".join(parts)


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'
