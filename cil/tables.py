"""Results tables as Markdown, LaTeX and CSV, with a footnote: the python -m cil.tables command.

    python -m cil.tables /tmp/sweep                     # prints Markdown; writes table.md/.tex/.csv
    python -m cil.tables /tmp/s/0 /tmp/s/1 --out=/tmp/paper   # shards merge: read every workdir
    python -m cil.tables /tmp/sweep --reference=replay  # I against replay's runs (default: joint)
    python -m cil.tables /tmp/ps --stats=params_trained,inference_flops_per_example
    table = load("/tmp/sweep"); print(markdown_table(table))

One row per strategy (and budget, and grid value), mean ± std over seeds; cil.aggregate builds
the rows (reading summaries, the protocol check, statistics, intransigence, AUC) and this module
re-exports its ``load``, ``build``, ``Table``, ``Row`` and the rest, so ``tables.load`` stays the
entry point. Columns: Ā, A_last, forgetting, BWT, intransigence (when the reference strategy,
joint by default, has runs of the stream), memory (MB, 10^6 bytes) and train seconds; accuracies
in %, mean ± sample standard deviation over seeds (a single seed shows its value alone). A
footnote gives the formulas, the reference and the stream. Memory-aligned sweeps get a budget
column and a second table of AUC-A and AUC-L. ``--stats`` adds columns of a strategy's own
figures (``strategy_stats``, its ``extras`` after the last task; mean over seeds, 4 significant
digits; blank for strategies without them). The CSV files hold the same numbers in the same
units (table.csv, auc.csv). Runs of different protocols are refused with one line naming the
difference, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from cil.aggregate import (  # noqa: F401  (re-exported: tables.load, tables.Table, ...)
    AUC_METRICS, DEFAULT_REFERENCE, METRICS, STATS_PREFIX, AucRow, Metric, Row, Table, auc, build,
    load, mean_std)
from cil.errors import CilError


def number(mean: float, std: float, n: int, decimals: int, latex: bool = False) -> str:
    """``mean ± std`` (the mean alone for one seed; a dash when undefined)."""
    if not np.isfinite(mean):
        return "--" if latex else "—"
    text = f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if n > 1 else "")
    return "$" + text.replace("±", r"\pm") + "$" if latex else text


def value_text(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(map(str, value)) + ")"
    return "—" if value is None else str(value)


def budget_text(budget: int | None) -> str:
    return "—" if budget is None else f"{budget / 1e6:g}"


def main_columns(table: Table) -> list[tuple[str, str]]:
    """(Markdown title, LaTeX title) of every column of the main table."""
    columns = [("strategy", "Strategy"), *((k, latex_escape(k)) for k in table.label_keys)]
    if table.has_budgets:
        columns.append(("budget (MB)", "Budget (MB)"))
    columns.append(("seeds", "Seeds"))
    return (columns + [(m.markdown, m.latex) for m in table.metrics()]
            + [(key, latex_escape(key)) for key in table.stat_keys])


def main_cells(table: Table, row: Row, latex: bool) -> list[str]:
    text = latex_escape if latex else str
    dagger = (r"$^\dagger$" if latex else " †") if row.mixed_basis else ""
    cells = [text(row.strategy) + dagger, *(text(value_text(row.labels.get(k)))
                                            for k in table.label_keys)]
    if table.has_budgets:
        cells.append(text(budget_text(row.budget)))
    cells.append(str(len(row.runs)))
    for m in table.metrics():
        mean, std = row.stats.get(m.key, (float("nan"), 0.0))
        cells.append(number(mean, std, len(row.runs), m.decimals, latex))
    for key in table.stat_keys:
        mean, std = row.stats.get(STATS_PREFIX + key, (float("nan"), 0.0))
        spread = std > 1e-9 * abs(mean)  # not float noise of equal values (their mean's rounding)
        cells.append("" if not np.isfinite(mean) else
                     f"{mean:,.4g}" + (f" ± {std:,.2g}" if spread else ""))
    return cells


def auc_columns(table: Table) -> list[tuple[str, str]]:
    return [("strategy", "Strategy"), *((k, latex_escape(k)) for k in table.label_keys),
            ("seeds", "Seeds"), *((m.markdown, m.latex) for m in AUC_METRICS)]


def auc_cells(table: Table, row: AucRow, latex: bool) -> list[str]:
    text = latex_escape if latex else str
    cells = [text(row.strategy), *(text(value_text(row.labels.get(k))) for k in table.label_keys),
             str(len(row.seeds))]
    for m in AUC_METRICS:
        if m.key in row.stats:
            cells.append(number(*row.stats[m.key], len(row.seeds), m.decimals, latex))
        else:
            cells.append(text(row.missing))
    return cells


FORMULAS = {  # metric key -> (Markdown, LaTeX), PROTOCOL.md's definitions
    "avg_inc_acc": ("Ā = mean over t of A[t]", r"$\bar{A} = \frac{1}{T}\sum_t A_t$"),
    "last_acc": ("A_last = A[T−1]", r"$A_{\mathrm{last}} = A_{T-1}$"),
    "forgetting": (
        "F = mean over j < T−1 of (max over l in [j, T−2] of a[l][j]) − a[T−1][j]",
        r"$F = \frac{1}{T-1}\sum_{j<T-1} \big(\max_{l\in[j,T-2]} a_{l,j} - a_{T-1,j}\big)$"),
    "bwt": ("BWT = mean over j < T−1 of a[T−1][j] − a[j][j]",
            r"$\mathrm{BWT} = \frac{1}{T-1}\sum_{j<T-1} (a_{T-1,j} - a_{j,j})$"),
    "task_given_last_acc": ("task given: each example's arg-max over its own task's classes",
                            r"task given: each example's arg-max over its own task's classes"),
    "nme_last_acc": ("NME: the nearest mean of exemplars on the strategy's features",
                     r"NME: the nearest mean of exemplars on the strategy's features"),
}


def formula(key: str, reference: str, latex: bool) -> str | None:
    """A metric's definition (None for none); I names the reference strategy's accuracies."""
    if key != "intransigence":
        return FORMULAS[key][1 if latex else 0] if key in FORMULAS else None
    if latex:
        return (r"$I = \frac{1}{T-1}\sum_{t\ge 1} (a^{\mathrm{" + latex_escape(reference)
                + r"}}_{t,t} - a_{t,t})$")
    return f"I = mean over t ≥ 1 of a_{reference}[t][t] − a[t][t]"


SYMBOLS = {  # name -> (Markdown, LaTeX), for the footnote's prose
    "Abar": ("Ā", r"$\bar{A}$"), "Alast": ("A_last", r"$A_{\mathrm{last}}$"),
    "pm": ("±", r"$\pm$"),
    "a": ("a[t][j]", r"$a_{t,j}$"), "A": ("A[t]", r"$A_t$"), "%": ("%", r"\%"),
    "mega": ("10^6", r"$10^6$"), "none": ("—", "--"), "dagger": ("†", r"$^\dagger$"),
    "budget": ("memory.budget_bytes", r"memory.budget\_bytes"),
}


def footnote(table: Table, latex: bool) -> str:
    """The stream, the seeds and every formula, in one paragraph."""
    y = {name: pair[1 if latex else 0] for name, pair in SYMBOLS.items()}
    s = table.stream
    order = " ".join(map(str, s["class_order"]))
    parts = [f"Stream: {s['dataset']} {s['split']} (T = {s['num_tasks']} tasks), class order seed "
             f"{s['class_order_seed']} (order {order}); seeds {', '.join(map(str, table.seeds))}; "
             f"mean {y['pm']} sample standard deviation over seeds."]
    formulas = [f for m in table.metrics() if (f := formula(m.key, table.reference, latex))]
    parts.append("; ".join(formulas) + f"; {y['a']} is the accuracy on task j's classes after "
                 f"task t, {y['A']} on all classes seen after task t.")
    if table.has_intransigence:
        text = latex_escape if latex else str
        ref = text(table.reference)
        mixed = "; ".join(dict.fromkeys(text(row.reference_basis) for row in table.rows
                                        if row.mixed_basis))
        budgeted = any(r.budget is not None for r in table.rows if r.strategy == table.reference)
        same = "seed and budget" if budgeted else "seed"
        parts.append(f"I compares each run with the {ref} run of the same {same}" + (
            f" ({y['dagger']}: where no {ref} run has that seed, with the mean of the {ref} "
            f"seeds: {mixed})" if mixed else "") + ".")
    encoder = " + frozen encoder" if s.get("memory.charge_encoder") else ""
    encoder += " + teacher copy" if s.get("memory.charge_teacher") else ""
    parts.append(f"Accuracies in {y['%']}; memory: the most bytes kept over the run (exemplars + "
                 f"learner parameters + side state{encoder}), 1 MB = {y['mega']} bytes; train: "
                 f"training wall-clock seconds summed over tasks, compiles excluded.")
    if table.has_budgets:
        parts.append(f"Budget: the total memory budget ({y['budget']}; {y['none']}: none); "
                     f"exemplars fill what a strategy's own model leaves of it (Zhou et al., "
                     f"section 4.4).")
    if table.auc:
        budgets = ", ".join(f"{b / 1e6:g}" for b in table.auc[0].budgets)
        parts.append(f"AUC-A / AUC-L: trapezoidal area under {y['Abar']} / {y['Alast']} "
                     f"(fractions) against the budget in MB, over budgets {budgets} MB (Zhou et "
                     f"al., section 4.5).")
    return " ".join(parts)


def markdown_rows(columns, rows) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown_table(table: Table) -> str:
    """The table, its AUC table if any, and the footnote, as Markdown."""
    if not table.rows:
        return f"(no finished runs in {', '.join(map(str, table.workdirs))})"
    lines = markdown_rows([c[0] for c in main_columns(table)],
                          [main_cells(table, row, latex=False) for row in table.rows])
    if table.auc:
        lines += [""] + markdown_rows([c[0] for c in auc_columns(table)],
                                      [auc_cells(table, row, latex=False) for row in table.auc])
    return "\n".join(lines + ["", footnote(table, latex=False)])


def latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("—", "--")


def latex_tabular(columns, rows) -> list[str]:
    lines = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
             " & ".join(columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in rows]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def latex_table(table: Table) -> str:
    """A booktabs ``table`` environment (``\\usepackage{booktabs}``) with the footnote below."""
    lines = [r"% made by python -m cil.tables; needs \usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", r"\small"]
    lines += latex_tabular([c[1] for c in main_columns(table)],
                           [main_cells(table, row, latex=True) for row in table.rows])
    if table.auc:
        lines += [r"\par\medskip"] + latex_tabular(
            [c[1] for c in auc_columns(table)],
            [auc_cells(table, row, latex=True) for row in table.auc])
    lines += [r"\par\smallskip", r"\parbox{\linewidth}{\footnotesize " + footnote(table, latex=True)
              + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def stat_cells(stats: dict, keys) -> list[str]:
    cells = []
    for key in keys:
        mean, std = stats.get(key, (float("nan"), float("nan")))
        cells += ["" if not np.isfinite(v) else str(round(v, 6)) for v in (mean, std)]
    return cells


def csv_table(table: Table) -> str:
    """The main table as CSV, in the table's units (%, MB, s); std is empty where undefined."""
    metrics = table.metrics()
    header = ["dataset", "split", "class_order_seed", "strategy", *table.label_keys,
              "budget_bytes", "num_seeds", "seeds",
              *(f"{m.csv}_{stat}" for m in metrics for stat in ("mean", "std")),
              *(f"{key}_{stat}" for key in table.stat_keys for stat in ("mean", "std")),
              "reference", "reference_basis"]
    stream = [table.stream.get(k) for k in ("dataset", "split", "class_order_seed")]
    rows = [[*stream, row.strategy, *(value_text(row.labels.get(k)) for k in table.label_keys),
             "" if row.budget is None else row.budget, len(row.runs),
             " ".join(map(str, row.seeds)), *stat_cells(row.stats, [m.key for m in metrics]),
             *stat_cells(row.stats, [STATS_PREFIX + k for k in table.stat_keys]),
             table.reference if row.reference_basis else "", row.reference_basis or ""]
            for row in table.rows]
    return csv_text(header, rows)


def auc_csv(table: Table) -> str:
    """AUC-A and AUC-L (fraction x MB) per strategy, with the budgets they span."""
    header = ["strategy", *table.label_keys, "budgets_bytes", "num_seeds", "seeds",
              *(f"{m.csv}_{stat}" for m in AUC_METRICS for stat in ("mean", "std")), "missing"]
    rows = [[row.strategy, *(value_text(row.labels.get(k)) for k in table.label_keys),
             " ".join(map(str, row.budgets)), len(row.seeds), " ".join(map(str, row.seeds)),
             *stat_cells(row.stats, [m.key for m in AUC_METRICS]), row.missing] for row in table.auc]
    return csv_text(header, rows)


def write(table: Table, out: Path) -> list[Path]:
    """table.md, table.tex, table.csv (and auc.csv for a memory-aligned sweep) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"table.md": markdown_table(table) + "\n", "table.tex": latex_table(table),
             "table.csv": csv_table(table)}
    if table.auc:
        files["auc.csv"] = auc_csv(table)
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cil.tables",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="workdirs of one stream (shards of a grid)")
    parser.add_argument("--out", help="where the files go (default: the first workdir)")
    parser.add_argument("--reference", help=f"the strategy intransigence I is measured against "
                                            f"(default: {DEFAULT_REFERENCE}); without runs of it, "
                                            f"no I column")
    parser.add_argument("--stats", default="", help="comma-separated strategy_stats figures "
                        "(a strategy's extras) to show as columns, e.g. params_trained")
    args = parser.parse_args(argv)
    try:
        table = load(*args.workdirs, reference=args.reference or DEFAULT_REFERENCE,
                     stat_keys=tuple(filter(None, args.stats.split(","))))
    except CilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not table.rows:
        print(f"error: no finished runs in {', '.join(args.workdirs)} (no summary lines in "
              f"results.jsonl); run python run.py --workdir=... first", file=sys.stderr)
        return 2
    if args.reference and not table.has_reference:
        print(f"note: no runs of --reference={args.reference} (strategies: "
              f"{', '.join(dict.fromkeys(row.strategy for row in table.rows))}); the table has "
              f"no I column", file=sys.stderr)
    print(markdown_table(table))
    for path in write(table, Path(args.out or args.workdirs[0])):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
