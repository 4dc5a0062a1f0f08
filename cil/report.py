"""A results page: one self-contained HTML file with the tables and the plots of a workdir.

    python -m cil.report /tmp/sweep                       # writes /tmp/sweep/report.html
    python -m cil.report /tmp/s/0 /tmp/s/1 --out=/tmp/paper/sweep.html   # shards merge
    python -m cil.report /tmp/sweep --reference=replay    # I against replay, as cil.tables'

    table = tables.load("/tmp/sweep")
    Path("report.html").write_text(html_report(table))

The page holds cil.tables' table (and, for memory-aligned sweeps, the AUC table) as HTML tables
with the same cells as table.md, the footnote with the stream and the formulas, and cil.plots'
figures: the A[t] curves, accuracy against memory (memory-aligned sweeps) and the accuracy-matrix
heat map of each strategy's representative run (its largest budget, lowest seed). The figures are
PNG images inside the file (base64 data URIs) and the style is inline: the page needs no other
file, no network and no script; open it in any browser, or send it as one attachment.

Several workdirs merge as in cil.tables (shards of one grid); runs of different protocols are
refused with one line naming the difference, exit status 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import struct
import sys
from pathlib import Path

from matplotlib.figure import Figure

from cil import plots, tables
from cil.errors import CilError, DataError, WorkdirError

DEFAULT_NAME = "report.html"
DPI = 100  # figures at 100 dpi are shown at their own pixel size

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       margin: 24px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; white-space: nowrap; text-align: left; }
th { background: #f3f3f5; border-bottom: 2px solid #999; }
th.num, td.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafafb; }
p.note { font-size: 12px; color: #444; max-width: 1100px; }
figure { margin: 8px 0; }
figcaption { font-size: 12px; color: #555; }
div.matrices { display: flex; flex-wrap: wrap; gap: 12px; }
img { max-width: 100%; height: auto; }
"""


def e(text) -> str:
    """Text and attribute values, HTML-escaped."""
    return html.escape(str(text), quote=True)


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    """A <table>; the first column left-aligned, the others right-aligned (as table.md's)."""
    def cells(tag, values):
        return "".join(f"<{tag}>{e(v)}</{tag}>" if i == 0 else f'<{tag} class="num">{e(v)}</{tag}>'
                       for i, v in enumerate(values))
    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return (f"<table>\n<thead><tr>{cells('th', columns)}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


def png(figure: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (the Agg canvas cil.plots draws on)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image(data: bytes, alt: str, caption: str = "") -> str:
    """A <figure> with the PNG inline as a data URI, at its pixel size."""
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk of a PNG
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    text = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="{source}" width="{width}" height="{height}" alt="{e(alt)}">'
            f"{text}</figure>")


def html_report(table: tables.Table) -> str:
    """The whole page for ``table``: tables, footnote, curves, memory plot, heat maps."""
    if not table.rows:
        raise DataError(f"no finished runs in {', '.join(map(str, table.workdirs))}")
    stream = table.stream
    title = f"{stream['dataset']} {stream['split']}"
    runs = sum(len(row.runs) for row in table.rows)
    strategies = len({row.strategy for row in table.rows})
    parts = [f"<h1>{e(title)}: class-incremental results</h1>",
             f'<p class="meta">T = {e(stream["num_tasks"])} tasks; {runs} runs of {strategies} '
             f"strateg{'y' if strategies == 1 else 'ies'}, seeds "
             f"{e(', '.join(map(str, table.seeds)))}; from {e(', '.join(map(str, table.workdirs)))}"
             f" (python -m cil.report)</p>",
             "<h2>Results</h2>",
             html_table([c[0] for c in tables.main_columns(table)],
                        [tables.main_cells(table, row, latex=False) for row in table.rows])]
    if table.auc:
        parts.append(html_table([c[0] for c in tables.auc_columns(table)],
                                [tables.auc_cells(table, row, latex=False) for row in table.auc]))
    parts.append(f'<p class="note">{e(tables.footnote(table, latex=False))}</p>')
    parts += ["<h2>Accuracy on all seen classes</h2>",
              image(png(plots.curves_figure(table)), f"A[t] against classes seen, {title}")]
    if table.auc:
        parts += ["<h2>Accuracy against memory</h2>",
                  image(png(plots.memory_figure(table)),
                        f"average and last accuracy against the memory budget, {title}")]
    matrices = [image(png(plots.matrix_figure(run)),
                      f"accuracy matrix of {run['strategy']} seed {run['seed']}")
                for run in plots.representative_runs(table)]
    parts += ["<h2>Accuracy matrices</h2>",
              '<p class="meta">a[t][j] (%): accuracy on task j\'s classes after learning task t; '
              "each strategy's run at its largest budget, lowest seed.</p>",
              '<div class="matrices">' + "\n".join(matrices) + "</div>"]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(title)}: cil results</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def output_path(out, workdirs) -> Path:
    """``--out`` as given (a folder gets report.html inside), else the first workdir's."""
    if out is None:
        return Path(workdirs[0]) / DEFAULT_NAME
    out = Path(out)
    return out / DEFAULT_NAME if out.is_dir() else out


def write(table: tables.Table, out: Path) -> Path:
    """The page of ``table`` written to ``out`` (its folder created); WorkdirError if it can't."""
    text = html_report(table)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        raise WorkdirError(f"cannot write {out}: {error.strerror or error}; "
                           f"choose another --out") from None
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cil.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="workdirs of one stream (shards of a grid)")
    parser.add_argument("--out", help=f"the HTML file (a folder: {DEFAULT_NAME} in it; default: "
                                      f"{DEFAULT_NAME} in the first workdir)")
    parser.add_argument("--reference", default=tables.DEFAULT_REFERENCE,
                        help="the strategy intransigence I is measured against, as in "
                             "python -m cil.tables (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        table = tables.load(*args.workdirs, reference=args.reference)
        if not table.rows:
            raise DataError(f"no finished runs in {', '.join(args.workdirs)} (no summary lines "
                            f"in results.jsonl); run python run.py --workdir=... first")
        path = write(table, output_path(args.out, args.workdirs))
    except CilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
