"""Results tables: one row per strategy (and budget, and grid value), mean ± std over seeds.

    python -m cil.tables /tmp/sweep                     # prints Markdown; writes table.md/.tex/.csv
    python -m cil.tables /tmp/s/0 /tmp/s/1 --out=/tmp/paper   # shards merge: read every workdir
    table = load("/tmp/sweep"); print(markdown_table(table))

Reads only the summary lines of results files. Columns: Ā, A_last, forgetting, BWT, intransigence
(when a joint run of the same stream exists), memory (MB, 10^6 bytes) and train seconds; accuracies
in %, mean ± sample standard deviation over seeds (a single seed shows its value alone). A footnote
gives the formulas and the stream. Runs that differ in a setting (a grid field, say) get their own
rows, labelled by the settings that differ. Memory-aligned sweeps (runs with
``memory.budget_bytes``) get a budget column and a second table of AUC-A and AUC-L: the
trapezoidal area under Ā and A_last (fractions) against the budget in MB (Zhou et al., sections 4.4
and 4.5; PROTOCOL.md). The CSV files hold the same numbers in the same units (table.csv, auc.csv).

One table holds one protocol: the stream (dataset, split, class order seed and class order, number
of tasks) and its evaluation (the one evaluator; ``memory.charge_encoder``, which decides what the
memory column counts). The model, epochs, budget or a strategy's settings are settings, not
protocol. Runs of different protocols are refused with a ConfigError naming the difference.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cil.errors import CilError, ConfigError
from cil.evaluation import intransigence
from cil.results import read_summaries

# Summary fields that identify the stream, and config fields that change what is evaluated.
STREAM_FIELDS = ("dataset", "split", "class_order_seed", "class_order", "num_tasks")
EVALUATION_SETTINGS = ("memory.charge_encoder", "memory.charge_teacher")
BUDGET = "memory.budget_bytes"
# Settings that say where data came from or how it was batched for testing, not what was learned.
NOT_SETTINGS = ("checkpoint", "eval_batch_size", "dataset.data_dir", "dataset.download",
                "dataset.path")
JOINT = "joint"


@dataclasses.dataclass(frozen=True)
class Metric:
    """A column: where its numbers come from, its titles, units and precision."""

    key: str  # the summary field (or a computed one)
    markdown: str
    latex: str
    scale: float  # from the results file's units to the table's
    decimals: int
    csv: str  # CSV column stem, with the table's unit


METRICS = (
    Metric("avg_inc_acc", "Ā (%)", r"$\bar{A}$ (\%)", 100.0, 2, "avg_inc_acc_pct"),
    Metric("last_acc", "A_last (%)", r"$A_{\mathrm{last}}$ (\%)", 100.0, 2, "last_acc_pct"),
    Metric("forgetting", "F (%)", r"$F$ (\%)", 100.0, 2, "forgetting_pct"),
    Metric("bwt", "BWT (%)", r"BWT (\%)", 100.0, 2, "bwt_pct"),
    Metric("intransigence", "I (%)", r"$I$ (\%)", 100.0, 2, "intransigence_pct"),
    Metric("memory_bytes", "memory (MB)", r"Memory (MB)", 1e-6, 3, "memory_mb"),
    Metric("train_seconds", "train (s)", r"Train (s)", 1.0, 2, "train_seconds"),
)
AUC_METRICS = (  # fraction x MB
    Metric("auc_a", "AUC-A", r"AUC-$\bar{A}$", 1.0, 4, "auc_a"),
    Metric("auc_l", "AUC-L", r"AUC-$A_{\mathrm{last}}$", 1.0, 4, "auc_l"),
)


@dataclasses.dataclass
class Row:
    """Runs of one strategy with equal settings, one per seed, and their statistics."""

    strategy: str
    labels: dict[str, Any]  # settings that differ between rows of a strategy (not the budget)
    budget: int | None
    runs: list[dict]
    stats: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    joint_basis: str | None = None  # "same seed", or which seeds were compared with a joint mean

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]


@dataclasses.dataclass
class AucRow:
    """One strategy's curve over the budgets: AUC-A and AUC-L, mean and std over seeds."""

    strategy: str
    labels: dict[str, Any]
    budgets: list[int]
    seeds: list[int]
    stats: dict[str, tuple[float, float]]
    missing: str = ""  # why there is no AUC (a budget without runs)


@dataclasses.dataclass
class Table:
    """Rows of one protocol (stream and evaluation), their AUCs, and what the footnote needs."""

    rows: list[Row]
    auc: list[AucRow]
    stream: dict  # STREAM_FIELDS and EVALUATION_SETTINGS
    label_keys: list[str]
    workdirs: tuple[str, ...]

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for row in self.rows for seed in row.seeds})

    @property
    def has_budgets(self) -> bool:
        return any(row.budget is not None for row in self.rows)

    @property
    def has_intransigence(self) -> bool:
        return any(row.joint_basis for row in self.rows)

    def metrics(self) -> list[Metric]:
        return [m for m in METRICS if m.key != "intransigence" or self.has_intransigence]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def flat_settings(settings: dict, prefix: str = "") -> dict[str, Any]:
    """A run's config as {dotted path: value}; lists become tuples so values compare and hash."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def auc(budgets_bytes, values) -> float:
    """Trapezoidal area under ``values`` against the budgets in MB (PROTOCOL.md AUC-A / AUC-L)."""
    x = np.asarray(budgets_bytes, dtype=float) * 1e-6
    order = np.argsort(x)
    return float(np.trapezoid(np.asarray(values, dtype=float)[order], x[order]))


def protocol_of(run: dict) -> dict:
    settings = flat_settings(run.get("config", {}))
    return {**{f: run.get(f) for f in STREAM_FIELDS},
            # Absent: a run from before the setting existed, which charged nothing extra.
            **{f: settings.get(f, False) for f in EVALUATION_SETTINGS}}


def check_one_protocol(tagged: list[tuple[str, dict]]) -> dict:
    """The shared protocol of all runs; a ConfigError names the first field that differs."""
    first_dir, first = tagged[0][0], protocol_of(tagged[0][1])
    for workdir, run in tagged[1:]:
        protocol = protocol_of(run)
        for field, value in protocol.items():
            if value != first[field]:
                raise ConfigError(
                    f"cannot put runs of different protocols in one table: {field} is "
                    f"{first[field]} in {first_dir} ({tagged[0][1]['strategy']}) but {value} in "
                    f"{workdir} ({run['strategy']}); make one table per stream")
    return first


def group_runs(runs: list[dict]) -> tuple[list[Row], list[str]]:
    """Rows of runs with equal strategy and settings; the label keys that tell rows apart."""
    groups: dict[tuple, list[dict]] = {}
    settings = {}
    for run in runs:
        flat = {k: v for k, v in flat_settings(run.get("config", {})).items()
                if k not in NOT_SETTINGS}
        settings[run["run_id"]] = flat
        key = (run["strategy"], json.dumps(flat, sort_keys=True, default=str))
        groups.setdefault(key, []).append(run)
    label_keys = []
    for strategy in dict.fromkeys(s for s, _ in groups):
        mine = [settings[g[0]["run_id"]] for (s, _), g in groups.items() if s == strategy]
        for key in dict.fromkeys(k for flat in mine for k in flat):
            varies = len({json.dumps(flat.get(key), default=str) for flat in mine}) > 1
            if varies and key != BUDGET and key not in label_keys:
                label_keys.append(key)
    rows = []
    for (strategy, _), group in groups.items():
        flat = settings[group[0]["run_id"]]
        by_seed = {}
        for run in group:
            by_seed.setdefault(run["seed"], run)  # a seed run twice (other data_dir): the first
        rows.append(Row(strategy, {k: flat[k] for k in label_keys if k in flat}, flat.get(BUDGET),
                        [by_seed[s] for s in sorted(by_seed)]))
    # Strategies as first met (shards may interleave them), joint last: the upper bound.
    order = {s: i for i, s in enumerate(dict.fromkeys(r.strategy for r in rows))}
    rows.sort(key=lambda r: (r.strategy == JOINT, order[r.strategy], r.budget is not None,
                             r.budget or 0, [sort_key(r.labels.get(k)) for k in label_keys]))
    return rows, label_keys


def sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def joint_reference(row: Row, run: dict, joints: list[Row], label_keys: list[str]):
    """The joint runs to measure a run's intransigence against, and how they were chosen.

    Joint rows must agree with the run's row on every label that is not a strategy's own setting
    or the budget (a grid over epochs compares with the joint run of the same epochs); of those,
    the joint run of the same seed, else the mean of all their seeds.
    """
    shared = [k for k in label_keys if not k.startswith(("strategy.", "memory."))]
    matching = [r for j in joints for r in j.runs
                if all(j.labels.get(k) == row.labels.get(k) for k in shared)]
    same_seed = [r for r in matching if r["seed"] == run["seed"]]
    if same_seed:
        return same_seed, None
    joint_seeds = ", ".join(str(r["seed"]) for r in matching)
    return matching, f"seed {run['seed']} against the mean of joint seeds {joint_seeds}"


def fill_statistics(rows: list[Row], label_keys: list[str]) -> None:
    joints = [r for r in rows if r.strategy == JOINT]
    for row in rows:
        values = {m.key: [] for m in METRICS}
        fallbacks = []
        for run in row.runs:
            for m in METRICS:
                if m.key != "intransigence":
                    values[m.key].append(run[m.key] * m.scale)
            reference, basis = joint_reference(row, run, joints, label_keys)
            if reference:
                diagonal = np.mean([[r["acc_matrix"][t][t] for t in range(r["num_tasks"])]
                                    for r in reference], axis=0)
                joint_matrix = [[None] * t + [d] for t, d in enumerate(diagonal)]
                value = intransigence(run["acc_matrix"], joint_matrix)
                values["intransigence"].append(100.0 * value)
                fallbacks += [basis] if basis else []
        row.stats = {k: mean_std(v) for k, v in values.items() if len(v) == len(row.runs)}
        if "intransigence" in row.stats:
            row.joint_basis = "; ".join(fallbacks) or "same seed"


def auc_rows(rows: list[Row]) -> list[AucRow]:
    """AUC-A and AUC-L per strategy (and labels) over the table's budgets, per seed, then mean."""
    budgeted = [r for r in rows if r.budget is not None]
    budgets = sorted({r.budget for r in budgeted})
    if len(budgets) < 2:
        return []
    series: dict[tuple, dict[int, Row]] = {}
    for row in budgeted:
        key = (row.strategy, json.dumps(row.labels, sort_keys=True, default=str))
        series.setdefault(key, {})[row.budget] = row
    result = []
    for (strategy, _), by_budget in series.items():
        labels = next(iter(by_budget.values())).labels
        missing = [b for b in budgets if b not in by_budget]
        if missing:
            result.append(AucRow(strategy, labels, budgets, [], {}, "no runs at budget(s) "
                                 + ", ".join(f"{b / 1e6:g} MB" for b in missing)))
            continue
        seeds = sorted(set.intersection(*(set(by_budget[b].seeds) for b in budgets)))
        curves = {s: [next(r for r in by_budget[b].runs if r["seed"] == s) for b in budgets]
                  for s in seeds}
        stats = {
            "auc_a": mean_std([auc(budgets, [r["avg_inc_acc"] for r in curves[s]]) for s in seeds]),
            "auc_l": mean_std([auc(budgets, [r["last_acc"] for r in curves[s]]) for s in seeds]),
        } if seeds else {}
        result.append(AucRow(strategy, labels, budgets, seeds, stats,
                             "" if seeds else "no seed has runs at every budget"))
    return result


def build(tagged: list[tuple[str, dict]], workdirs=()) -> Table:
    """A table from (workdir, summary) pairs: one protocol, runs deduplicated by run id."""
    unique = {}
    for workdir, run in tagged:
        unique.setdefault(run["run_id"], (workdir, run))  # the same run copied into two workdirs
    tagged = list(unique.values())
    if not tagged:
        return Table([], [], {}, [], tuple(workdirs))
    stream = check_one_protocol(tagged)
    rows, label_keys = group_runs([run for _, run in tagged])
    fill_statistics(rows, label_keys)
    return Table(rows, auc_rows(rows), stream, label_keys, tuple(workdirs))


def load(*workdirs) -> Table:
    """The table of every finished run in ``workdirs`` (shards of one grid merge this way)."""
    return build([(str(w), run) for w in workdirs for run in read_summaries(w)], workdirs)


# ---- rendering ----

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
    return columns + [(m.markdown, m.latex) for m in table.metrics()]


def main_cells(table: Table, row: Row, latex: bool) -> list[str]:
    text = latex_escape if latex else str
    dagger = (r"$^\dagger$" if latex else " †") if mixed_basis(row) else ""
    cells = [text(row.strategy) + dagger, *(text(value_text(row.labels.get(k)))
                                            for k in table.label_keys)]
    if table.has_budgets:
        cells.append(text(budget_text(row.budget)))
    cells.append(str(len(row.runs)))
    for m in table.metrics():
        mean, std = row.stats.get(m.key, (float("nan"), 0.0))
        cells.append(number(mean, std, len(row.runs), m.decimals, latex))
    return cells


def mixed_basis(row: Row) -> bool:
    return bool(row.joint_basis) and row.joint_basis != "same seed"


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
    "intransigence": ("I = mean over t ≥ 1 of a_joint[t][t] − a[t][t]",
                      r"$I = \frac{1}{T-1}\sum_{t\ge 1} (a^{\mathrm{joint}}_{t,t} - a_{t,t})$"),
}


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
    formulas = [FORMULAS[m.key][1 if latex else 0] for m in table.metrics() if m.key in FORMULAS]
    parts.append("; ".join(formulas) + f"; {y['a']} is the accuracy on task j's classes after "
                 f"task t, {y['A']} on all classes seen after task t.")
    if table.has_intransigence:
        mixed = "; ".join(dict.fromkeys(row.joint_basis for row in table.rows if mixed_basis(row)))
        parts.append("I compares each run with the joint run of the same seed" + (
            f" ({y['dagger']}: where no joint run has that seed, with the mean of the joint "
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


def stat_cells(stats: dict, metrics) -> list[str]:
    cells = []
    for m in metrics:
        mean, std = stats.get(m.key, (float("nan"), float("nan")))
        cells += ["" if not np.isfinite(v) else str(round(v, 6)) for v in (mean, std)]
    return cells


def csv_table(table: Table) -> str:
    """The main table as CSV, in the table's units (%, MB, s); std is empty where undefined."""
    metrics = table.metrics()
    header = ["dataset", "split", "class_order_seed", "strategy", *table.label_keys,
              "budget_bytes", "num_seeds", "seeds",
              *(f"{m.csv}_{stat}" for m in metrics for stat in ("mean", "std")), "joint_basis"]
    stream = [table.stream.get(k) for k in ("dataset", "split", "class_order_seed")]
    rows = [[*stream, row.strategy, *(value_text(row.labels.get(k)) for k in table.label_keys),
             "" if row.budget is None else row.budget, len(row.runs),
             " ".join(map(str, row.seeds)), *stat_cells(row.stats, metrics), row.joint_basis or ""]
            for row in table.rows]
    return csv_text(header, rows)


def auc_csv(table: Table) -> str:
    """AUC-A and AUC-L (fraction x MB) per strategy, with the budgets they span."""
    header = ["strategy", *table.label_keys, "budgets_bytes", "num_seeds", "seeds",
              *(f"{m.csv}_{stat}" for m in AUC_METRICS for stat in ("mean", "std")), "missing"]
    rows = [[row.strategy, *(value_text(row.labels.get(k)) for k in table.label_keys),
             " ".join(map(str, row.budgets)), len(row.seeds), " ".join(map(str, row.seeds)),
             *stat_cells(row.stats, AUC_METRICS), row.missing] for row in table.auc]
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
    args = parser.parse_args(argv)
    try:
        table = load(*args.workdirs)
    except CilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not table.rows:
        print(f"error: no finished runs in {', '.join(args.workdirs)} (no summary lines in "
              f"results.jsonl); run python run.py --workdir=... first", file=sys.stderr)
        return 2
    print(markdown_table(table))
    for path in write(table, Path(args.out or args.workdirs[0])):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
