"""Results aggregated into tables: rows of runs, mean ± std over seeds, intransigence, AUC.

    table = load("/tmp/sweep")                          # every finished run in the workdir
    table = load("/tmp/s/0", "/tmp/s/1")                # shards of one grid merge this way
    table = load("/tmp/sweep", reference="replay")      # I against replay's runs (default: joint)
    table = build([(workdir, summary), ...])            # from summary records already read
    finetune = table.rows[0]; finetune.stats["avg_inc_acc"]   # (mean, std) in % over seeds

Reads only the summary lines of results files; cil.tables renders what this builds (Markdown,
LaTeX, CSV, the footnote) and is the entry point other modules use (it re-exports ``load``).
Metrics: Ā, A_last, forgetting, BWT, intransigence (when the reference strategy has runs of the
stream), memory (MB, 10^6 bytes) and train seconds; accuracies in %, mean ± sample standard
deviation over seeds. Runs that differ in a setting (a grid field, say) get their own rows,
labelled by the settings that differ. Memory-aligned sweeps (runs with ``memory.budget_bytes``)
also get AUC-A and AUC-L: the trapezoidal area under Ā and A_last (fractions) against the budget
in MB (Zhou et al., sections 4.4 and 4.5; PROTOCOL.md).

Intransigence I = mean over t ≥ 1 of a_ref[t][t] − a[t][t] compares each run with the reference
strategy's run of the same seed (``reference``, "joint" by default: DEFAULT_REFERENCE) whose
settings agree with the run's on everything but a strategy's own settings and the memory section,
at the run's budget if the reference has runs there, else its unbudgeted runs; a seed the
reference lacks compares with the mean of the reference's seeds (``Row.reference_basis`` says).

One table holds one protocol: the stream (dataset, split, class order seed and class order, number
of tasks) and its evaluation (the one evaluator; ``memory.charge_encoder``, which decides what the
memory column counts). The model, epochs, budget or a strategy's settings are settings, not
protocol. Runs of different protocols are refused with a ConfigError naming the difference.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from cil.errors import ConfigError
from cil.evaluation import intransigence
from cil.results import read_summaries

# Summary fields that identify the stream, and config fields that change what is evaluated.
STREAM_FIELDS = ("dataset", "split", "class_order_seed", "class_order", "num_tasks")
EVALUATION_SETTINGS = ("memory.charge_encoder", "memory.charge_teacher")
BUDGET = "memory.budget_bytes"
# Settings that say where data came from or how it was batched for testing, not what was learned.
NOT_SETTINGS = ("checkpoint", "eval_batch_size", "dataset.data_dir", "dataset.download",
                "dataset.path")
# The strategy intransigence is measured against unless a table names another (--reference).
DEFAULT_REFERENCE = "joint"
SAME_SEED = "same seed"  # Row.reference_basis when every run had a reference run of its seed


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
    # cil/evaluators.py's task_given and nme: columns when some run of the table has them
    Metric("task_given_avg_inc_acc", "Ā task given (%)", r"$\bar{A}$ task given (\%)", 100.0, 2,
           "task_given_avg_inc_acc_pct"),
    Metric("task_given_last_acc", "A_last task given (%)", r"$A_{\mathrm{last}}$ task given (\%)",
           100.0, 2, "task_given_last_acc_pct"),
    Metric("nme_avg_inc_acc", "Ā NME (%)", r"$\bar{A}$ NME (\%)", 100.0, 2, "nme_avg_inc_acc_pct"),
    Metric("nme_last_acc", "A_last NME (%)", r"$A_{\mathrm{last}}$ NME (\%)", 100.0, 2,
           "nme_last_acc_pct"),
    Metric("memory_bytes", "memory (MB)", r"Memory (MB)", 1e-6, 3, "memory_mb"),
    Metric("train_seconds", "train (s)", r"Train (s)", 1.0, 2, "train_seconds"),
)
STATS_PREFIX = "stats."  # Row.stats keys of strategy_stats figures
OPTIONAL_METRICS = ("task_given_avg_inc_acc", "task_given_last_acc",  # not in every summary
                    "nme_avg_inc_acc", "nme_last_acc")
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
    # SAME_SEED, or which seeds were compared with the mean of the reference's seeds; None: no I
    reference_basis: str | None = None

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]

    @property
    def mixed_basis(self) -> bool:
        """Some run's I compares with the mean of the reference's seeds, not its own seed."""
        return bool(self.reference_basis) and self.reference_basis != SAME_SEED


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
    reference: str = DEFAULT_REFERENCE  # the strategy intransigence is measured against
    stat_keys: tuple[str, ...] = ()  # strategy_stats figures shown as columns (``--stats``)

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for row in self.rows for seed in row.seeds})

    @property
    def has_budgets(self) -> bool:
        return any(row.budget is not None for row in self.rows)

    @property
    def has_intransigence(self) -> bool:
        return any(row.reference_basis for row in self.rows)

    @property
    def has_reference(self) -> bool:
        """Whether the reference strategy has runs in the table."""
        return any(row.strategy == self.reference for row in self.rows)

    def metrics(self) -> list[Metric]:
        return [m for m in METRICS if (m.key != "intransigence" or self.has_intransigence)
                and (m.key not in OPTIONAL_METRICS
                     or any(m.key in row.stats for row in self.rows))]


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


def group_runs(runs: list[dict], reference: str = DEFAULT_REFERENCE
               ) -> tuple[list[Row], list[str]]:
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
    # Strategies as first met (shards may interleave them), the reference last: what I measures
    # the others against (joint, by default: the upper bound).
    order = {s: i for i, s in enumerate(dict.fromkeys(r.strategy for r in rows))}
    rows.sort(key=lambda r: (r.strategy == reference, order[r.strategy], r.budget is not None,
                             r.budget or 0, [sort_key(r.labels.get(k)) for k in label_keys]))
    return rows, label_keys


def sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def reference_runs(row: Row, run: dict, references: list[Row], label_keys: list[str]):
    """The reference runs to measure a run's intransigence against, and how they were chosen.

    Reference rows must agree with the run's row on every label that is not a strategy's own
    setting or the memory section (a grid over epochs compares with the reference run of the same
    epochs), and on the budget where the reference has runs at the row's budget (else its
    unbudgeted runs count: joint runs without one); of those, the run of the same seed, else the
    mean of all their seeds. Returns (runs, None) for the same seed, (runs, why) for a mean, and
    ([], None) where the reference has no run to compare with.
    """
    shared = [k for k in label_keys if not k.startswith(("strategy.", "memory."))]
    agreeing = [r for r in references if all(r.labels.get(k) == row.labels.get(k) for k in shared)]
    at_budget = [r for r in agreeing if r.budget == row.budget]
    matching = [run for r in at_budget or [r for r in agreeing if r.budget is None]
                for run in r.runs]
    same_seed = [r for r in matching if r["seed"] == run["seed"]]
    if same_seed or not matching:
        return same_seed, None
    seeds = ", ".join(str(r["seed"]) for r in matching)
    strategy = matching[0]["strategy"]
    return matching, f"seed {run['seed']} against the mean of {strategy} seeds {seeds}"


def fill_statistics(rows: list[Row], label_keys: list[str],
                    reference: str = DEFAULT_REFERENCE, stat_keys: tuple[str, ...] = ()) -> None:
    """Each row's (mean, std) per metric; I against ``reference``'s runs where it has some."""
    references = [r for r in rows if r.strategy == reference]
    for row in rows:
        values = {m.key: [] for m in METRICS}
        fallbacks = []
        for run in row.runs:
            for m in METRICS:
                if m.key != "intransigence" and m.key in run:
                    values[m.key].append(run[m.key] * m.scale)
            compared, basis = reference_runs(row, run, references, label_keys)
            if compared:
                diagonal = np.mean([[r["acc_matrix"][t][t] for t in range(r["num_tasks"])]
                                    for r in compared], axis=0)
                reference_matrix = [[None] * t + [d] for t, d in enumerate(diagonal)]
                value = intransigence(run["acc_matrix"], reference_matrix)
                values["intransigence"].append(100.0 * value)
                fallbacks += [basis] if basis else []
        for key in stat_keys:  # a strategy's own figures (Strategy.extras), where it has them
            found = [run.get("strategy_stats", {}).get(key) for run in row.runs]
            if all(isinstance(v, (int, float)) for v in found):
                values[STATS_PREFIX + key] = found
        row.stats = {k: mean_std(v) for k, v in values.items() if len(v) == len(row.runs)}
        if "intransigence" in row.stats:
            row.reference_basis = "; ".join(fallbacks) or SAME_SEED


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


def build(tagged: list[tuple[str, dict]], workdirs=(), reference: str = DEFAULT_REFERENCE,
          stat_keys: tuple[str, ...] = ()) -> Table:
    """A table from (workdir, summary) pairs: one protocol, runs deduplicated by run id.

    ``reference`` names the strategy intransigence is measured against; without runs of it the
    table has no I column. ``stat_keys`` name figures of the summaries' ``strategy_stats`` (a
    strategy's ``extras`` after its last task) to average over seeds, in ``Row.stats`` as
    ``stats.<key>``; a row whose runs lack one has none.
    """
    unique = {}
    for workdir, run in tagged:
        unique.setdefault(run["run_id"], (workdir, run))  # the same run copied into two workdirs
    tagged = list(unique.values())
    if not tagged:
        return Table([], [], {}, [], tuple(workdirs), reference, tuple(stat_keys))
    stream = check_one_protocol(tagged)
    rows, label_keys = group_runs([run for _, run in tagged], reference)
    fill_statistics(rows, label_keys, reference, tuple(stat_keys))
    return Table(rows, auc_rows(rows), stream, label_keys, tuple(workdirs), reference,
                 tuple(stat_keys))


def load(*workdirs, reference: str = DEFAULT_REFERENCE, stat_keys: tuple[str, ...] = ()) -> Table:
    """The table of every finished run in ``workdirs`` (shards of one grid merge this way)."""
    return build([(str(w), run) for w in workdirs for run in read_summaries(w)], workdirs,
                 reference, stat_keys)
