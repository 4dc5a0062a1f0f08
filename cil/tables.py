"""Results tables: one row per strategy, mean ± std over seeds (Markdown and CSV).

    python -m cil.tables workdir/default               # prints Markdown, writes table.csv beside
    rows = load("workdir/default"); print(markdown_table(rows))

Reads only summary lines of results files. Accuracies are shown in %, memory in MB (10^6 bytes),
std is the sample standard deviation over seeds (0 for one seed).
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict

import numpy as np

from cil.results import read_summaries

# (column title, summary field, scale)
COLUMNS = (
    ("Ā (%)", "avg_inc_acc", 100.0),
    ("A_last (%)", "last_acc", 100.0),
    ("forgetting (%)", "forgetting", 100.0),
    ("BWT (%)", "bwt", 100.0),
    ("memory (MB)", "memory_bytes", 1e-6),
    ("train (s)", "train_seconds", 1.0),
)


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def aggregate(summaries: list[dict]) -> list[dict]:
    """One row per strategy (first-seen order): mean and std of each column over its seeds."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        groups[s["strategy"]].append(s)
    rows = []
    for strategy, runs in groups.items():
        row = {"strategy": strategy, "seeds": sorted(r["seed"] for r in runs)}
        for _, field, scale in COLUMNS:
            row[field] = mean_std([r[field] * scale for r in runs])
        rows.append(row)
    return rows


def load(*workdirs) -> list[dict]:
    return aggregate(read_summaries(*workdirs))


def markdown_table(rows: list[dict]) -> str:
    header = ["strategy", "seeds", *(title for title, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["strategy"], str(len(row["seeds"]))]
        cells += [f"{row[field][0]:.2f} ± {row[field][1]:.2f}" for _, field, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["strategy", "seeds", *(f"{f}_{stat}" for _, f, _ in COLUMNS for stat in ("mean", "std"))])
    for row in rows:
        writer.writerow([row["strategy"], len(row["seeds"]),
                         *(f"{v:.6g}" for _, f, _ in COLUMNS for v in row[f])])
    return out.getvalue()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m cil.tables WORKDIR [WORKDIR ...]", file=sys.stderr)
        return 2
    rows = load(*argv)
    if not rows:
        print(f"error: no finished runs in {', '.join(argv)} (no summary lines in results.jsonl)",
              file=sys.stderr)
        return 2
    print(markdown_table(rows))
    from pathlib import Path
    (Path(argv[0]) / "table.csv").write_text(csv_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
