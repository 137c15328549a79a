"""The report as a small document model — headings, paragraphs, lists, tables, images, foldable details — built once
(study/report_sections.py) and written twice: as one self-contained HTML page (images embedded as base64) and as
Markdown (images linked as files beside it). Both renderers walk the same blocks, so the two files carry the same
content; only the markup differs.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2
    verdict: str | None = None  # a finding's verdict, shown as a badge after the text


@dataclass
class Para:
    text: str
    kind: str = ""  # "banner" (a warning about the data), "skip" (a part without data), "" (plain)


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    failed_col: int | None = None  # a column whose "failed"/"blocked" marks the row
    verdict_col: int | None = None  # a column of verdicts, shown as badges


@dataclass
class Image:
    alt: str
    caption: str
    href: str  # where Markdown links it, relative to the report folder
    png: bytes | None = None  # the image itself, or
    path: Path | None = None  # a PNG file to read


@dataclass
class Figure:
    """One captioned image (a plot)."""

    image: Image


@dataclass
class Gallery:
    """Several small captioned images side by side (sample grids, reconstructions)."""

    images: list[Image]


@dataclass
class Details:
    """Blocks folded away by default (in Markdown: shown under a bold summary line)."""

    summary: str
    blocks: list = field(default_factory=list)


Block = Heading | Para | Bullets | Table | Figure | Gallery | Details


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Document:
        self.blocks.extend(blocks)
        return self


def texts(blocks: list[Block]) -> list[str]:
    """Every piece of text the blocks carry, in order: what both renderings must show."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += [b.text] + ([b.verdict] if b.verdict else [])
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out += b.items
        elif isinstance(b, Table):
            out += b.head + [c for row in b.rows for c in row]
        elif isinstance(b, Figure):
            out.append(b.image.caption)
        elif isinstance(b, Gallery):
            out += [i.caption for i in b.images]
        elif isinstance(b, Details):
            out += [b.summary] + texts(b.blocks)
    return out


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
 color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #d0d0d0;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f5}tr.failed td{background:#fdecea}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;margin-top:.3em}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;border-radius:4px}
.v{font-weight:600;padding:.1em .45em;border-radius:3px;white-space:nowrap}
.confirmed{background:#d9f2dd;color:#1b5e20}.not-confirmed{background:#fbdada;color:#8e1b1b}
.inconclusive{background:#eee;color:#444}.skip{color:#8a6d00}
.samples{display:flex;flex-wrap:wrap;gap:1.2em}.samples figure{margin:0;width:360px}
.samples img{width:100%;image-rendering:pixelated}
code{background:#f3f3f5;padding:0 .25em}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _badge(v: str) -> str:
    return f'<span class="v {v.replace(" ", "-")}">{_e(v)}</span>'


def _html_image(i: Image) -> str:
    png = i.png if i.png is not None else Path(i.path).read_bytes()
    src = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    return f'<figure><img alt="{_e(i.alt)}" src="{src}"><figcaption>{_e(i.caption)}</figcaption></figure>'


def _html_table(t: Table) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in t.head) + "</tr>"]
    for row in t.rows:
        failed = t.failed_col is not None and row[t.failed_col] in ("failed", "blocked")
        cells = "".join(f"<td>{_badge(c) if j == t.verdict_col else _e(c)}</td>" for j, c in enumerate(row))
        out.append(('<tr class="failed">' if failed else "<tr>") + cells + "</tr>")
    return "\n".join(out) + "</table>"


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{_e(b.text)}{' ' + _badge(b.verdict) if b.verdict else ''}</h{b.level}>"
    if isinstance(b, Para):
        return f'<p class="{b.kind}">{_e(b.text)}</p>' if b.kind else f"<p>{_e(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b.items) + "</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        return _html_image(b.image)
    if isinstance(b, Gallery):
        return "<div class=samples>" + "".join(_html_image(i) for i in b.images) + "</div>"
    if isinstance(b, Details):
        inner = "\n".join(_html_block(x) for x in b.blocks)
        return f"<details><summary>{_e(b.summary)}</summary>{inner}</details>"
    raise TypeError(f"not a report block: {type(b).__name__}")


def to_html(doc: Document) -> str:
    head = f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(doc.title)}</title><style>{CSS}</style>"
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return f"{head}</head><body>\n<h1>{_e(doc.title)}</h1>\n{body}\n</body></html>"


# ---------------------------------------------------------------------------------------------- Markdown


def md_escape(s: str) -> str:
    """Text as Markdown shows it: table pipes escaped, line breaks flattened."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    def cell(j: int, c: str) -> str:
        return f"**{md_escape(c)}**" if j == t.verdict_col else md_escape(c)

    lines = ["| " + " | ".join(md_escape(h) for h in t.head) + " |", "|" + "---|" * len(t.head)]
    lines += ["| " + " | ".join(cell(j, c) for j, c in enumerate(row)) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_image(i: Image) -> str:
    return f"![{md_escape(i.alt)}]({i.href})\n\n{md_escape(i.caption)}"


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + md_escape(b.text) + (f" — **{b.verdict}**" if b.verdict else "")
    if isinstance(b, Para):
        return f"> **{md_escape(b.text)}**" if b.kind == "banner" else md_escape(b.text)
    if isinstance(b, Bullets):
        return "\n".join(f"- {md_escape(x)}" for x in b.items)
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        return _md_image(b.image)
    if isinstance(b, Gallery):
        return "\n\n".join(_md_image(i) for i in b.images)
    if isinstance(b, Details):
        return "\n\n".join([f"**{md_escape(b.summary)}**"] + [_md_block(x) for x in b.blocks])
    raise TypeError(f"not a report block: {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    return "\n\n".join([f"# {md_escape(doc.title)}"] + [_md_block(b) for b in doc.blocks]) + "\n"
