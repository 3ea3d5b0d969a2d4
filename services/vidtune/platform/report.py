"""Reports people read: one builder writes the same content as Markdown and as self-contained HTML.

Figures are matplotlib figures (or PNG files) saved beside the report and linked from both versions,
so the Markdown renders on any viewer and the HTML opens offline from a bucket or a directory.
"""
from __future__ import annotations

import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .storage import Storage, join

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
figcaption{color:#555;font-size:13px}img{max-width:100%;border:1px solid #eee}
.good{color:#17803d}.bad{color:#b42318}.muted{color:#777}pre{background:#f6f6f6;padding:8px;overflow:auto}"""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"


@dataclass
class Report:
    title: str
    _md: list[str] = field(default_factory=list)
    _html: list[str] = field(default_factory=list)
    _files: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes written beside the report

    def heading(self, text: str, level: int = 2) -> "Report":
        self._md.append(f"{'#' * level} {text}\n")
        self._html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, css_class: str = "") -> "Report":
        self._md.append(f"{text}\n")
        cls = f' class="{css_class}"' if css_class else ""
        self._html.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def bullets(self, items: list[str]) -> "Report":
        self._md.append("\n".join(f"- {i}" for i in items) + "\n")
        self._html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        return self

    def code(self, text: str) -> "Report":
        self._md.append(f"```\n{text}\n```\n")
        self._html.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def table(self, headers: list[str], rows: list[list], css: dict[tuple[int, int], str] | None = None) -> "Report":
        """A table; `css[(row, col)]` names a class ("good", "bad", "muted") for one HTML cell."""
        css = css or {}
        fmt = [[_fmt(v) for v in row] for row in rows]
        md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in fmt]
        self._md.append("\n".join(md) + "\n")
        body = "".join(
            "<tr>" + "".join(
                f'<td class="{css.get((i, j), "")}">{html.escape(c)}</td>' for j, c in enumerate(row)) + "</tr>"
            for i, row in enumerate(fmt))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        self._html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def figure(self, fig_or_png, caption: str, name: str | None = None) -> "Report":
        """Add a matplotlib figure (closed after saving) or PNG bytes/path as `<name>.png` beside the report."""
        name = f"{slug(name or caption)}.png"
        base, i = name[:-4], 1
        while name in self._files:
            i += 1
            name = f"{base}-{i}.png"
        self._files[name] = png_bytes(fig_or_png)
        rel = f"figures/{name}"
        self._md.append(f"![{caption}]({rel})\n\n*{caption}*\n")
        self._html.append(f'<figure><img src="{rel}" alt="{html.escape(caption)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def raw_html(self, fragment: str, markdown: str = "") -> "Report":
        self._html.append(fragment)
        if markdown:
            self._md.append(markdown + "\n")
        return self

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n".join(self._md)

    def html(self) -> str:
        return (f"<!doctype html><html lang=\"ko\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self._html) + "</body></html>")

    def write(self, out_dir: str, storage: Storage | None = None, stem: str = "report",
              data: dict | None = None) -> dict[str, str]:
        """Write `<stem>.md`, `<stem>.html`, figures/ and optionally `<stem>.json` below `out_dir`."""
        storage = storage or Storage()
        uris = {"markdown": join(out_dir, f"{stem}.md"), "html": join(out_dir, f"{stem}.html")}
        for name, png in self._files.items():
            storage.write_bytes(join(out_dir, "figures", name), png, "image/png")
        storage.write_text(uris["markdown"], self.markdown(), "text/markdown; charset=utf-8")
        storage.write_text(uris["html"], self.html(), "text/html; charset=utf-8")
        if data is not None:
            uris["json"] = join(out_dir, f"{stem}.json")
            storage.write_text(uris["json"], json.dumps(data, ensure_ascii=False, indent=2, default=str),
                               "application/json")
        return uris


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def png_bytes(obj) -> bytes:
    """PNG bytes of a matplotlib figure (closed after saving), of PNG bytes, or of a PNG file."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, (str, Path)):
        return Path(obj).read_bytes()
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    obj.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(obj)
    return buf.getvalue()


def new_figure(width: float = 7, height: float = 3.5):
    """A matplotlib figure on the headless backend, with a Korean-capable font when one is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    for family in ("NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "UnDotum"):
        if any(f.name == family for f in font_manager.fontManager.ttflist):
            plt.rcParams["font.family"] = family
            break
    plt.rcParams["axes.unicode_minus"] = False
    return plt.subplots(figsize=(width, height))
