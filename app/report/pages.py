"""The report's content blocks and their two renderings: one HTML page, one Markdown file.

A report is a list of :class:`Section` objects holding :class:`Text`, :class:`Facts`,
:class:`Table`, :class:`Figure`, :class:`Row` (figures side by side) and
:class:`Details` blocks; a plain string is a sub-heading. :func:`render_html` makes
one self-contained page (figures embedded as base64 PNG, no script, no outside
resource); :func:`render_markdown` makes a Markdown file whose figures are the same
PNG files in the report folder. Every piece of text (class names come from folder
names a user chose) is escaped for the page it goes into.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# Numbers in tables: a format string per column, else these defaults.
FLOAT_FORMAT = "{:.4f}"
# Table columns drawn with a bar behind the number (values in 0..1).
BAR_COLOUR = "#cfe3f6"


@dataclass(frozen=True)
class Text:
    """A paragraph (``kind``: ``text``, ``note`` or ``warning``)."""

    text: str
    kind: str = "text"


@dataclass(frozen=True)
class Facts:
    """Headline figures: ``(label, value)`` pairs shown as cards (a two-column table in Markdown)."""

    items: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    """A table.

    Attributes:
        frame: the rows.
        caption: shown above it.
        formats: ``{column: format string or callable}`` for its cells.
        bars: columns (values 0..1) drawn with a proportional bar behind the number.
        file: the CSV file in the report folder with the same rows, linked below it.
        highlight: a column of booleans; rows where it is true are marked (the
            column itself is not shown).
    """

    frame: pd.DataFrame
    caption: str = ""
    formats: dict[str, Any] = field(default_factory=dict)
    bars: Sequence[str] = ()
    file: str | None = None
    highlight: str | None = None


@dataclass(frozen=True)
class Figure:
    """A PNG figure, written to the report folder as ``file`` and embedded in the page."""

    file: str
    png: bytes
    caption: str
    natural: bool = False  # shown at its pixel size in a scrolling box, not shrunk to the page


@dataclass(frozen=True)
class Row:
    """Figures side by side where the page is wide enough (in Markdown one after another)."""

    figures: Sequence[Figure]


@dataclass(frozen=True)
class Details:
    """Blocks folded away under a summary line (HTML ``<details>``; in Markdown a heading)."""

    summary: str
    blocks: Sequence[Any]


@dataclass(frozen=True)
class Section:
    """A titled part of the report; ``anchor`` is its id in the page."""

    title: str
    anchor: str
    blocks: Sequence[Any]


def _cell(value: Any, column: str, formats: dict[str, Any]) -> str:
    style = formats.get(column)
    if callable(style):
        return str(style(value))
    if style is not None:
        return style.format(value)
    if isinstance(value, float):
        return FLOAT_FORMAT.format(value)
    return str(value)


def _columns(table: Table) -> list[str]:
    return [column for column in table.frame.columns if column != table.highlight]


# ---------------------------------------------------------------- HTML

_CSS = (
    """
:root { --ink: #1d2733; --muted: #5b6776; --line: #d8dee6; --accent: #1f5f99; --soft: #f4f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: #fff; }
header { background: #17324d; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; overflow-wrap: anywhere; }
header p { margin: 4px 0 0; color: #c9d7e6; font-size: 13px; overflow-wrap: anywhere; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 28px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap;
        display: inline-block; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 28px 48px; }
section { margin-top: 30px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0; overflow-wrap: anywhere; }
p.note { color: var(--muted); font-size: 13px; }
p.warning { background: #fff4e5; border-left: 4px solid #f0a030; padding: 8px 12px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.fact { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.fact .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.fact .value { font-size: 19px; font-weight: 600; overflow-wrap: anywhere; }
.scroll { max-width: 100%; overflow-x: auto; max-height: 640px; overflow-y: auto;
          border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
caption { text-align: left; font-weight: 600; padding: 6px 8px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eef1f4; text-align: right; vertical-align: top; }
th { position: sticky; top: 0; background: var(--soft); text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; overflow-wrap: anywhere; min-width: 8em; }
tr.marked td { background: #fdecec; }
td.bar { background-repeat: no-repeat; background-size: var(--w) 100%; background-image:
         linear-gradient("""
    + BAR_COLOUR
    + """, """
    + BAR_COLOUR
    + """); white-space: nowrap; }
figure { margin: 14px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figure .natural { max-height: 900px; }
.row { display: flex; flex-wrap: wrap; gap: 0 18px; align-items: flex-start; }
.row > figure { flex: 1 1 360px; min-width: 0; }
figure .natural img { max-width: none; border: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; overflow-wrap: anywhere; }
details { margin: 10px 0; border: 1px solid var(--line); border-radius: 4px; padding: 4px 12px; }
details > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
a.file { font-size: 12px; color: var(--accent); }
pre { background: var(--soft); padding: 10px; overflow-x: auto; font-size: 12px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
"""
)


def _html_table(table: Table) -> str:
    columns = _columns(table)
    kinds = {column: "text" if table.frame[column].dtype == object else "num" for column in columns}
    head = "".join(f'<th class="{kinds[column]}">{html.escape(str(column))}</th>' for column in columns)
    body = []
    marks = table.frame[table.highlight] if table.highlight else None
    for position, (_, row) in enumerate(table.frame.iterrows()):
        cells = []
        for column in columns:
            text = html.escape(_cell(row[column], column, table.formats))
            if column in table.bars and isinstance(row[column], (int, float)):
                width = max(0.0, min(1.0, float(row[column]))) * 100
                cells.append(f'<td class="bar" style="--w: {width:.1f}%">{text}</td>')
            elif table.frame[column].dtype == object:
                cells.append(f'<td class="text">{text}</td>')
            else:
                cells.append(f"<td>{text}</td>")
        marked = ' class="marked"' if marks is not None and bool(marks.iloc[position]) else ""
        body.append(f"<tr{marked}>{''.join(cells)}</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    link = ""
    if table.file:
        link = f'<a class="file" href="report/{html.escape(table.file)}">{html.escape(table.file)}</a>'
    rows = "\n".join(body)
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>\n{rows}\n</tbody></table></div>{link}"
    )


def _html_block(block: Any) -> str:
    if isinstance(block, Text):
        return f'<p class="{html.escape(block.kind)}">{html.escape(block.text)}</p>'
    if isinstance(block, Facts):
        cards = "".join(
            f'<div class="fact"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div></div>'
            for label, value in block.items
        )
        return f'<div class="facts">{cards}</div>'
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        alt = html.escape(block.caption)
        image = f'<img src="data:image/png;base64,{data}" alt="{alt}">'
        if block.natural:
            image = f'<div class="scroll natural">{image}</div>'
        return f"<figure>{image}<figcaption>{html.escape(block.caption)}</figcaption></figure>"
    if isinstance(block, Row):
        return '<div class="row">' + "".join(_html_block(item) for item in block.figures) + "</div>"
    if isinstance(block, Details):
        inner = "\n".join(_html_block(item) for item in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>\n{inner}\n</details>"
    if isinstance(block, str):
        return f"<h3>{html.escape(block)}</h3>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """One self-contained HTML page of the sections."""
    navigation = "".join(
        f'<a href="#{html.escape(section.anchor)}">{html.escape(section.title)}</a>' for section in sections
    )
    parts = []
    for section in sections:
        blocks = "\n".join(_html_block(block) for block in section.blocks)
        anchor, heading = html.escape(section.anchor), html.escape(section.title)
        parts.append(f'<section id="{anchor}"><h2>{heading}</h2>\n{blocks}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{navigation}</nav><main>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )


# ---------------------------------------------------------------- Markdown

_MARKDOWN_SPECIAL = str.maketrans({"|": "\\|", "*": "\\*", "_": "\\_", "`": "\\`", "[": "\\[", "]": "\\]"})


def markdown_text(text: str) -> str:
    """Text safe inside Markdown (and the HTML a Markdown viewer may let through)."""
    escaped = html.escape(str(text), quote=False).translate(_MARKDOWN_SPECIAL)
    return " ".join(escaped.split())  # a newline would end a table row


def _markdown_table(table: Table, folder: str) -> list[str]:
    columns = _columns(table)
    numeric = [table.frame[column].dtype != object for column in columns]
    lines = []
    if table.caption:
        lines += [f"**{markdown_text(table.caption)}**", ""]
    lines.append("| " + " | ".join(markdown_text(column) for column in columns) + " |")
    lines.append("|" + "|".join("---:" if number else ":---" for number in numeric) + "|")
    for _, row in table.frame.iterrows():
        cells = [markdown_text(_cell(row[column], column, table.formats)) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if table.file:
        lines += ["", f"([{markdown_text(table.file)}]({folder}/{table.file}))"]
    return lines + [""]


def _markdown_block(block: Any, folder: str, level: int) -> list[str]:
    if isinstance(block, Text):
        prefix = {"note": "_", "warning": "**Warning:** "}.get(block.kind, "")
        suffix = "_" if block.kind == "note" else ""
        return [f"{prefix}{markdown_text(block.text)}{suffix}", ""]
    if isinstance(block, Facts):
        rows = pd.DataFrame(
            {"": [label for label, _ in block.items], " ": [value for _, value in block.items]}
        )
        return _markdown_table(Table(rows), folder)
    if isinstance(block, Table):
        return _markdown_table(block, folder)
    if isinstance(block, Figure):
        return [
            f"![{markdown_text(block.caption)}]({folder}/{block.file})",
            "",
            f"_{markdown_text(block.caption)}_",
            "",
        ]
    if isinstance(block, Row):
        return [line for item in block.figures for line in _markdown_block(item, folder, level)]
    if isinstance(block, Details):
        lines = ["#" * (level + 1) + " " + markdown_text(block.summary), ""]
        for item in block.blocks:
            lines += _markdown_block(item, folder, level + 1)
        return lines
    if isinstance(block, str):
        return ["#" * level + " " + markdown_text(block), ""]
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, sections: Sequence[Section], folder: str, subtitle: str = "") -> str:
    """The sections as Markdown; figures are links to ``folder/<file>``."""
    lines = [f"# {markdown_text(title)}", ""]
    if subtitle:
        lines += [markdown_text(subtitle), ""]
    lines += [f"- [{markdown_text(section.title)}](#{section.anchor})" for section in sections] + [""]
    for section in sections:
        lines += [f'<a id="{html.escape(section.anchor)}"></a>', "", f"## {markdown_text(section.title)}", ""]
        for block in section.blocks:
            lines += _markdown_block(block, folder, 3)
    return "\n".join(lines).rstrip() + "\n"


def duration_text(seconds: float) -> str:
    """A duration as people read it: seconds, minutes or hours."""
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
