"""Plots of results files, as PNG and PDF, drawn on matplotlib's Agg canvas (no display needed).

    python -m cil.plots /tmp/sweep                         # into /tmp/sweep/plots
    python -m cil.plots /tmp/s/0 /tmp/s/1 --out=/tmp/paper --run_id=405b9d2cda70

    accuracy_curve.png/.pdf      A[t] against the number of classes seen: one line per strategy,
                                 a band of ± one standard deviation over seeds; a panel per budget
                                 (and grid value); unbudgeted rows (sweep.unbudgeted: joint by
                                 default) drawn dashed in each panel
    accuracy_vs_memory.png/.pdf  Ā and A_last against the total budget (memory-aligned sweeps), the
                                 AUC in the legend, unbudgeted runs as dashed horizontal lines
    matrix_<strategy>.png/.pdf   the accuracy matrix a[t][j] of one run as a heat map (by default
                                 each strategy's run at its largest budget, lowest seed)

    table = tables.load("/tmp/sweep")
    plot_curves(table, Path("out/accuracy_curve"))         # returns the two files written
    figure = curves_figure(table)                          # the Figure alone (cil/report.py)

Reads only results files, through cil.tables (the tables' rows, seeds and protocol check).
Figures are ``matplotlib.figure.Figure`` objects, never pyplot, so nothing touches a display.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cil import tables
from cil.errors import CilError, DataError

FORMATS = ("png", "pdf")
PANEL_SIZE = (4.2, 3.2)  # inches


def classes_seen(split: str, num_tasks: int) -> list[int]:
    """Classes seen after each task of a B{m}-Inc{n} split (PROTOCOL.md: m = 0 means n)."""
    match = re.fullmatch(r"B(\d+)-Inc(\d+)", split)
    if not match:
        raise DataError(f"split '{split}' in the results is not of the form B{{m}}-Inc{{n}}")
    initial, increment = int(match[1]), int(match[2])
    return [(initial or increment) + t * increment for t in range(num_tasks)]


def new_figure(panels: int, columns: int = 3) -> tuple[Figure, list]:
    rows, cols = -(-panels // columns), min(panels, columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, list(axes[:panels])


def save(figure: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def own(labels: dict) -> dict:
    """A strategy's own settings among a row's labels (they name lines, not panels)."""
    return {k: v for k, v in labels.items() if k.startswith("strategy.")}


def shared(labels: dict) -> dict:
    return {k: v for k, v in labels.items() if not k.startswith("strategy.")}


def line_name(strategy: str, labels: dict) -> str:
    text = ", ".join(f"{k.removeprefix('strategy.')}={tables.value_text(v)}"
                     for k, v in labels.items())
    return f"{strategy} ({text})" if text else strategy


def colours(names) -> dict[str, str]:
    """One colour per line name, the same in every panel of a figure."""
    names = list(dict.fromkeys(names))
    if len(names) <= 10:
        return {name: f"C{i}" for i, name in enumerate(names)}
    palette = matplotlib.colormaps["tab20"]  # distinct colours up to 20 lines, then they repeat
    return {name: palette(i % 20) for i, name in enumerate(names)}


def band(axis, x, curves, colour, label, dashed=False) -> None:
    """Mean line and a ± std band over seeds (no band for one seed)."""
    curves = np.asarray(curves, dtype=float)
    mean = curves.mean(axis=0)
    axis.plot(x, mean, color=colour, label=label, linestyle="--" if dashed else "-", marker="o",
              markersize=3)
    if len(curves) > 1:
        std = curves.std(axis=0, ddof=1)
        axis.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)


def panels(table: tables.Table) -> list[tuple[int | None, dict]]:
    """(budget, shared labels) of each curve panel; without budgets, one panel per label value."""
    keyed = [(row.budget, shared(row.labels)) for row in table.rows if row.budget is not None]
    keyed = keyed or [(None, shared(row.labels)) for row in table.rows]
    unique = []
    for key in keyed:
        if key not in unique:
            unique.append(key)
    return unique


def in_panel(row: tables.Row, budget, labels: dict) -> bool:
    """A row belongs to its own panel; an unbudgeted one also to every panel of its labels."""
    same_labels = all(row.labels.get(k, v) == v for k, v in labels.items())
    return same_labels and (row.budget == budget or row.budget is None)


def plot_curves(table: tables.Table, stem: Path) -> list[Path]:
    """curves_figure's PNG and PDF at ``stem``."""
    return save(curves_figure(table), stem)


def curves_figure(table: tables.Table) -> Figure:
    """A[t] (%) against classes seen, one line per strategy, with a band over seeds."""
    x = classes_seen(table.stream["split"], table.stream["num_tasks"])
    colour = colours(line_name(row.strategy, own(row.labels)) for row in table.rows)
    keys = panels(table)
    figure, axes = new_figure(len(keys))
    for axis, (budget, labels) in zip(axes, keys):
        rows_in = [r for r in table.rows if in_panel(r, budget, labels)]
        for row in rows_in:
            name = line_name(row.strategy, own(row.labels))
            dashed = budget is not None and row.budget is None
            band(axis, x, [[100 * a for a in run["A"]] for run in row.runs], colour[name],
                 name + (" (no budget)" if dashed else ""), dashed)
        title = [f"budget {tables.budget_text(budget)} MB"] if budget is not None else []
        title += [f"{k}={tables.value_text(v)}" for k, v in labels.items()]
        axis.set_title("; ".join(title), fontsize=9)
        axis.set_xlabel("classes seen")
        axis.set_ylabel("A[t] (%)")
        axis.set_xticks(x)
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        # Many lines: the legend beside the panel, where it hides no curve.
        outside = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if len(rows_in) > 6 else {}
        axis.legend(fontsize=7, **outside)
    seeds = ", ".join(map(str, table.seeds))
    spread = f"mean ± std over seeds {seeds}" if len(table.seeds) > 1 else f"seed {seeds}"
    # Two lines: one panel is narrower than the whole title.
    figure.suptitle(f"{table.stream['dataset']} {table.stream['split']}: accuracy on all seen "
                    f"classes\n({spread})", fontsize=10)
    return figure


def plot_memory(table: tables.Table, stem: Path) -> list[Path]:
    """memory_figure's PNG and PDF at ``stem``."""
    return save(memory_figure(table), stem)


def memory_figure(table: tables.Table) -> Figure:
    """Ā and A_last (%) against the total budget (MB), one line per strategy; AUC in the legend."""
    series: dict[str, list[tables.Row]] = {}
    for row in table.rows:
        series.setdefault(line_name(row.strategy, row.labels), []).append(row)
    colour = colours(series)
    aucs = {line_name(a.strategy, a.labels): a for a in table.auc}
    budgets_mb = np.asarray(table.auc[0].budgets, dtype=float) * 1e-6
    figure, axes = new_figure(2, columns=2)
    for axis, field, auc_key, title in zip(axes, ("avg_inc_acc", "last_acc"), ("auc_a", "auc_l"),
                                           ("Ā", "A_last")):
        for name, rows in series.items():
            if rows[0].budget is None:  # unbudgeted: a flat reference line over the budgets
                values = [100 * run[field] for run in rows[0].runs]
                band(axis, budgets_mb, [[v] * len(budgets_mb) for v in values], colour[name],
                     name + " (no budget)", dashed=True)
                continue
            curve = aucs.get(name)
            if curve is None or not curve.seeds:
                continue  # a budget without runs: no curve (the table says why)
            by_budget = {row.budget: row for row in rows}
            seed_curves = [[100 * next(r for r in by_budget[b].runs if r["seed"] == s)[field]
                            for b in curve.budgets] for s in curve.seeds]
            mean, std = curve.stats[auc_key]
            spread = f" ± {std:.4f}" if len(curve.seeds) > 1 else ""
            band(axis, budgets_mb, seed_curves, colour[name], f"{name}: AUC {mean:.4f}{spread}")
        axis.set_xlabel("total memory budget (MB)")
        axis.set_ylabel(f"{title} (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    stream = table.stream
    figure.suptitle(f"{stream['dataset']} {stream['split']}: memory-aligned comparison "
                    f"(AUC: fraction x MB)", fontsize=10)
    return figure


def plot_matrix(run: dict, stem: Path) -> list[Path]:
    """matrix_figure's PNG and PDF at ``stem``."""
    return save(matrix_figure(run), stem)


def matrix_figure(run: dict) -> Figure:
    """The accuracy matrix a[t][j] (%) of one run: rows after task t, columns task j <= t."""
    T = run["num_tasks"]
    matrix = np.full((T, T), np.nan)
    for t, row in enumerate(run["acc_matrix"]):
        matrix[t, :len(row)] = 100 * np.asarray(row, dtype=float)
    figure, [axis] = new_figure(1)
    image = axis.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    if T <= 12:  # numbers stay readable
        for t in range(T):
            for j in range(t + 1):
                axis.text(j, t, f"{matrix[t, j]:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if matrix[t, j] < 60 else "black")
    axis.set_xticks(range(T))
    axis.set_yticks(range(T))
    axis.set_xlabel("task j (its classes' test examples)")
    axis.set_ylabel("after learning task t")
    figure.colorbar(image, ax=axis, label="a[t][j] (%)")
    budget = (run.get("config") or {}).get("memory", {}).get("budget_bytes")
    axis.set_title(f"{run['strategy']} seed {run['seed']}"
                   + (f", budget {tables.budget_text(budget)} MB" if budget else "")
                   + f"\n{run['dataset']} {run['split']}, run {run['run_id']}", fontsize=8)
    return figure


def representative_runs(table: tables.Table) -> list[dict]:
    """Per strategy: the run at its largest budget (unbudgeted if it has none), lowest seed."""
    chosen = {}
    for row in table.rows:
        best = chosen.get(row.strategy)
        if best is None or (row.budget or 0) > (best[0] or 0):
            chosen[row.strategy] = (row.budget, row.runs[0])
    return [run for _, run in chosen.values()]


def plot_all(table: tables.Table, out: Path, run_id: str | None = None) -> list[Path]:
    """Every plot of ``table`` into ``out``; heat maps of ``run_id`` only, if given."""
    if not table.rows:
        raise DataError(f"no finished runs in {', '.join(map(str, table.workdirs))}")
    paths = plot_curves(table, out / "accuracy_curve")
    if table.auc:
        paths += plot_memory(table, out / "accuracy_vs_memory")
    runs = representative_runs(table)
    if run_id is not None:
        runs = [r for row in table.rows for r in row.runs if r["run_id"] == run_id]
        if not runs:
            raise DataError(f"no finished run {run_id} in {', '.join(map(str, table.workdirs))}")
    for run in runs:
        name = run["strategy"] if run_id is None else f"{run['strategy']}_{run_id}"
        paths += plot_matrix(run, out / f"matrix_{name}")
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cil.plots",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="workdirs of one stream (shards of a grid)")
    parser.add_argument("--out", help="where the files go (default: <first workdir>/plots)")
    parser.add_argument("--run_id", help="draw the accuracy matrix of this run only")
    args = parser.parse_args(argv)
    try:
        paths = plot_all(tables.load(*args.workdirs),
                         Path(args.out or Path(args.workdirs[0]) / "plots"), args.run_id)
    except CilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
