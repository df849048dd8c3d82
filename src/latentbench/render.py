"""A report as a document (tables of cells, figures, text) -> one self-contained HTML page and Markdown.

:mod:`latentbench.report` decides what the report says and builds the :class:`Document`; this module only
lays it out: HTML with the figures embedded as data URIs (one file to mail or attach) and Markdown that links
the figures relative to where it is written.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """One table cell: its text, green / red for a difference that beats / misses (None: neither)."""

    text: str
    good: bool | None = None  # colour of a difference cell
    numeric: bool = True


@dataclass
class Table:
    """A titled table of cells with an optional note under it, in one section of the report."""

    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    section: str = "metrics"  # reference | metrics | runs


@dataclass
class Document:
    """Everything the report says, in order: rendered as HTML and as Markdown alike."""

    title: str
    intro: list[str]
    tables: list[Table]
    figures: list[tuple[str, Any, list[tuple[str, Path]]]]  # (label, run, [(title, png)])
    protocol_rows: list[tuple[str, str, str]]
    commands: list[tuple[str, str]]
    env_rows: list[tuple[str, str]]
    reference: dict[str, Any]
    summary: list[str] = field(default_factory=list)


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#fff;
max-width:1300px;margin:2em auto;padding:0 1.2em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #e3e7ef;padding-bottom:.2em}
h3{margin:1.4em 0 .4em}p.meta{color:#4a5468;margin:.3em 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{padding:.35em .7em;border-bottom:1px solid #e3e7ef;text-align:left;vertical-align:top}
th{background:#f3f5f9;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfd}
td.good{color:#0b6e3d;font-weight:600}td.bad{color:#b3261e;font-weight:600}
p.note{color:#5b6578;font-size:.85em;margin-top:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em}
.card{border:1px solid #e3e7ef;border-radius:8px;padding:.8em;background:#fcfcfe}
.card h3{margin-top:0}.card.wide{grid-column:1/-1}
figure{margin:.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eef0f5}
figcaption{font-size:.85em;color:#4a5468}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f5f9;padding:.1em .3em;
border-radius:4px;word-break:break-all}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            cls = ["num"] if c.numeric else []
            if c.good is not None:
                cls.append("good" if c.good else "bad")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_esc(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{_esc(t.note)}</p>' if t.note else ""
    return (f"<h3>{_esc(t.title)}</h3><div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{note}")


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _kv_table(rows: list[tuple[str, str]], code: bool = False) -> str:
    wrap = (lambda v: f"<code>{_esc(v)}</code>") if code else _esc
    return "<table><tbody>" + "".join(f"<tr><th>{_esc(k)}</th><td>{wrap(v)}</td></tr>" for k, v in rows) + \
        "</tbody></table>"


def render_html(doc: Document) -> str:
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
             f"content=\"width=device-width,initial-scale=1\"><title>{_esc(doc.title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{_esc(doc.title)}</h1>"]
    parts += [f'<p class="meta">{_esc(line)}</p>' for line in doc.intro]
    if doc.summary:
        parts.append("<h2>In short</h2><ul>" + "".join(f"<li>{_esc(line)}</li>" for line in doc.summary) + "</ul>")
    ref_tables = [t for t in doc.tables if t.section == "reference"]
    other = [t for t in doc.tables if t.section != "reference"]
    parts.append("<h2>The report's tables, ours beside theirs</h2>")
    parts += [_html_table(t) for t in ref_tables] or ["<p>No MNIST or CIFAR-10 runs in this folder.</p>"]
    parts.append("<h2>Every metric</h2>")
    parts += [_html_table(t) for t in other]
    parts.append("<h2>Figures</h2>")
    for label, run, figs in doc.figures:
        cards = "".join(f'<div class="card{" wide" if path.stem == "tsne" else ""}"><figure>'
                        f'<img alt="{_esc(title)}" src="{_png_data(path)}">'
                        f"<figcaption>{_esc(title)} — {_esc(run.name)}</figcaption></figure></div>"
                        for title, path in figs)
        parts.append(f"<h3>{_esc(label)}</h3><div class=\"grid\">{cards}</div>")
    if not doc.figures:
        parts.append("<p>No figures yet: evaluate the runs (latentbench eval RUN_DIR).</p>")
    parts.append("<h2>Protocols</h2><p class=\"meta\">How each number was measured (from each run's metrics.json; "
                 "for several seeds, the first seed's text).</p>")
    if doc.protocol_rows:
        body = "".join(f"<tr><td><code>{_esc(k)}</code></td><td>{_esc(who)}</td><td>{_esc(text)}</td></tr>"
                       for k, who, text in doc.protocol_rows)
        parts.append(f"<div class=\"scroll\"><table><thead><tr><th>Number</th><th>Runs</th><th>Protocol</th></tr>"
                     f"</thead><tbody>{body}</tbody></table></div>")
    else:
        parts.append("<p>No evaluated runs.</p>")
    parts.append("<h2>Commands</h2><p class=\"meta\">Each run on its own (recipe + the study's overrides).</p>")
    parts.append(_kv_table(doc.commands, code=True))
    parts.append("<h2>Environment and time</h2>" + _kv_table(doc.env_rows))
    ref = doc.reference
    notes = "".join(f"<li>{_esc(n)}</li>" for n in ref.get("notes", []))
    parts.append(f"<h2>Source of the original numbers</h2><p>{_esc(ref['source'])} — {_esc(ref['document'])}. "
                 f"Units: {_esc(ref['units'])}.</p><ul>{notes}</ul>")
    parts.append(f'<p class="note">Generated {time.strftime("%Y-%m-%d %H:%M:%S")} by latentbench report.</p>'
                 "</body></html>")
    return "\n".join(parts)


def _md_cell(c: Cell) -> str:
    text = c.text.replace("|", "\\|")
    if c.good is True:
        return f"{text} ✓"
    if c.good is False:
        return f"{text} ✗"
    return text


def _md_table(t: Table) -> list[str]:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.header) + " |",
             "| " + " | ".join("---:" if i >= 1 and all(r[i].numeric for r in t.rows) and t.rows else "---"
                               for i in range(len(t.header))) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"*{t.note.replace('green', '✓')}*"]
    return lines + [""]


def render_markdown(doc: Document, md_dir: Path) -> str:
    lines = [f"# {doc.title}", ""] + [f"{line}  " for line in doc.intro] + [""]
    if doc.summary:
        lines += ["## In short", ""] + [f"- {line}" for line in doc.summary] + [""]
    lines += ["## The report's tables, ours beside theirs", ""]
    for t in doc.tables:
        if t.section == "reference":
            lines += _md_table(t)
    lines += ["## Every metric", ""]
    for t in doc.tables:
        if t.section != "reference":
            lines += _md_table(t)
    lines += ["## Figures", ""]
    for label, run, figs in doc.figures:
        lines += [f"### {label}", ""]
        for title, path in figs:
            rel = Path(os.path.relpath(path.resolve(), md_dir.resolve())).as_posix()
            lines += [f"![{title} — {run.name}]({rel})", ""]
    lines += ["## Protocols", "", "How each number was measured (from each run's metrics.json; for several seeds, "
              "the first seed's text).", "", "| Number | Runs | Protocol |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {who} | {text.replace('|', '/')} |" for k, who, text in doc.protocol_rows] + [""]
    lines += ["## Commands", "", "```"] + [f"# {name}\n{cmd}" for name, cmd in doc.commands] + ["```", ""]
    lines += ["## Environment and time", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in doc.env_rows] + [""]
    ref = doc.reference
    lines += ["## Source of the original numbers", "", f"{ref['source']} — {ref['document']}. Units: {ref['units']}.",
              ""] + [f"- {n}" for n in ref.get("notes", [])] + [""]
    return "\n".join(lines)
