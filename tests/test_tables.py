"""Tables from fixed results files: hand-computed means, stds, intransigence and AUC.

Runs of different streams or evaluation settings are refused. Intransigence is measured against
the reference strategy (joint unless --reference names another), with hand-computed numbers.
"""

import csv
import math

import pytest

from cil import aggregate, tables
from cil.errors import ConfigError
from cil.results import ResultsWriter


def summary(strategy, seed, *, avg=0.5, last=0.3, diag=0.9, budget=None, memory=1_000_000,
            seconds=1.0, split="B0-Inc2", epochs=1, charge_encoder=False):
    """A summary line of a 2-task run; ``diag`` is a[1][1] (what intransigence compares)."""
    return {
        "kind": "summary",
        "run_id": f"{strategy}-{seed}-{budget}-{split}-{epochs}-{charge_encoder}",
        "strategy": strategy, "seed": seed, "dataset": "blobs", "split": split,
        "class_order_seed": 1993, "class_order": [0, 1, 2, 3], "num_tasks": 2,
        "acc_matrix": [[0.95], [0.4, diag]], "A": [0.95, last], "avg_inc_acc": avg,
        "last_acc": last, "forgetting": 0.55, "bwt": -0.55, "memory_bytes": memory,
        "train_seconds": seconds,
        "config": {"memory": {"budget_bytes": budget, "charge_encoder": charge_encoder,
                              "exemplars": None},
                   "train": {"epochs": epochs}, "strategy": {"name": strategy},
                   "checkpoint": True},
    }


def write_results(workdir, runs):
    writer = ResultsWriter(workdir)
    for run in runs:
        writer.append(run)
    return str(workdir)


def fixed_runs():
    """finetune on seeds 0, 1, 2; joint on seeds 0, 1 only (seed 2 compares with their mean)."""
    return [
        summary("finetune", 0, avg=0.50, last=0.20, diag=0.7, seconds=1.0),
        summary("finetune", 1, avg=0.60, last=0.30, diag=0.5, seconds=2.0),
        summary("finetune", 2, avg=0.70, last=0.40, diag=0.6, seconds=3.0),
        summary("joint", 0, avg=0.90, last=0.85, diag=0.9, memory=3_000_000),
        summary("joint", 1, avg=0.94, last=0.87, diag=0.8, memory=3_000_000),
    ]


def memory_aligned_runs():
    """replay at 1, 2 and 4 MB on seeds 0 and 1, and an unbudgeted joint run."""
    curves = {0: ([0.5, 0.6, 0.8], [0.3, 0.5, 0.7]), 1: ([0.3, 0.4, 0.6], [0.2, 0.3, 0.5])}
    runs = [summary("replay", seed, avg=avg, last=last, budget=budget)
            for seed, (avgs, lasts) in curves.items()
            for budget, avg, last in zip((1_000_000, 2_000_000, 4_000_000), avgs, lasts)]
    return runs + [summary("joint", 0, avg=0.9, last=0.85)]


def test_means_and_stds_match_hand_computation(tmp_path):
    table = tables.load(write_results(tmp_path, fixed_runs()))
    finetune, joint = table.rows
    assert finetune.strategy == "finetune" and finetune.seeds == [0, 1, 2]
    assert finetune.stats["avg_inc_acc"] == pytest.approx((60.0, 10.0))
    assert finetune.stats["last_acc"] == pytest.approx((30.0, 10.0))
    assert finetune.stats["train_seconds"] == pytest.approx((2.0, 1.0))
    assert finetune.stats["memory_bytes"] == pytest.approx((1.0, 0.0))
    assert joint.stats["avg_inc_acc"] == pytest.approx((92.0, math.sqrt(8.0)))
    # a_joint[1][1] - a[1][1]: 0.9 - 0.7 and 0.8 - 0.5 (same seed); seed 2: mean(0.9, 0.8) - 0.6
    assert finetune.stats["intransigence"] == pytest.approx((25.0, 5.0))
    assert finetune.reference_basis == "seed 2 against the mean of joint seeds 0, 1"
    text = tables.markdown_table(table)
    assert "| finetune † | 3 | 60.00 ± 10.00 | 30.00 ± 10.00 |" in text
    assert "25.00 ± 5.00" in text and "92.00 ± 2.83" in text
    assert "Stream: blobs B0-Inc2 (T = 2 tasks), class order seed 1993" in text
    assert "seeds 0, 1, 2" in text and "I = mean over t ≥ 1 of a_joint[t][t] − a[t][t]" in text


def test_without_joint_there_is_no_intransigence_column(tmp_path):
    table = tables.load(write_results(tmp_path, fixed_runs()[:3]))
    assert not table.has_intransigence
    assert "I (%)" not in tables.markdown_table(table)


def test_command_writes_markdown_latex_and_csv_with_the_same_numbers(tmp_path, capsys):
    workdir = write_results(tmp_path / "runs", fixed_runs())
    assert tables.main([workdir, "--out", str(tmp_path / "out")]) == 0
    assert "60.00 ± 10.00" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").read_text().splitlines()))
    assert [r["strategy"] for r in rows] == ["finetune", "joint"]
    assert float(rows[0]["avg_inc_acc_pct_mean"]) == pytest.approx(60.0)
    assert float(rows[0]["avg_inc_acc_pct_std"]) == pytest.approx(10.0)
    assert float(rows[0]["intransigence_pct_mean"]) == pytest.approx(25.0)
    latex = (tmp_path / "out" / "table.tex").read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert r"$60.00 \pm 10.00$" in latex and r"$\bar{A}$ (\%)" in latex
    assert (tmp_path / "out" / "table.md").read_text().startswith("| strategy |")


def test_auc_is_the_trapezoid_over_budgets_in_mb():
    # (0.5 + 0.6) / 2 * 1 MB + (0.6 + 0.8) / 2 * 2 MB, whatever order the budgets come in
    assert tables.auc([1e6, 2e6, 4e6], [0.5, 0.6, 0.8]) == pytest.approx(1.95)
    assert tables.auc([4e6, 1e6, 2e6], [0.8, 0.5, 0.6]) == pytest.approx(1.95)


def test_memory_aligned_table_has_budget_rows_and_auc(tmp_path):
    table = tables.load(write_results(tmp_path, memory_aligned_runs()))
    assert [(r.strategy, r.budget) for r in table.rows] == [
        ("replay", 1_000_000), ("replay", 2_000_000), ("replay", 4_000_000), ("joint", None)]
    [replay] = table.auc
    assert replay.seeds == [0, 1] and replay.budgets == [1_000_000, 2_000_000, 4_000_000]
    # seed 0: 1.95; seed 1: 0.35 + 1.0 = 1.35.  A_last: 0.4 + 1.2 = 1.6 and 0.25 + 0.8 = 1.05
    assert replay.stats["auc_a"] == pytest.approx((1.65, math.sqrt(0.18)))
    assert replay.stats["auc_l"] == pytest.approx((1.325, math.sqrt(((1.6 - 1.05) ** 2) / 2)))
    text = tables.markdown_table(table)
    assert "| replay † | 1 | 2 | 40.00 ± 14.14 |" in text
    assert "| joint | — | 1 | 90.00 |" in text
    assert "1.6500 ± 0.4243" in text and "over budgets 1, 2, 4 MB" in text
    auc_csv = list(csv.DictReader(tables.auc_csv(table).splitlines()))
    assert float(auc_csv[0]["auc_a_mean"]) == pytest.approx(1.65)


def test_auc_is_withheld_when_a_budget_has_no_runs(tmp_path):
    runs = memory_aligned_runs() + [summary("finetune", 0, budget=1_000_000),
                                    summary("finetune", 0, budget=2_000_000)]
    table = tables.load(write_results(tmp_path, runs))
    finetune = next(a for a in table.auc if a.strategy == "finetune")
    assert finetune.stats == {} and "4 MB" in finetune.missing


def test_runs_of_different_streams_are_refused(tmp_path):
    a = write_results(tmp_path / "a", fixed_runs())
    b = write_results(tmp_path / "b", [summary("replay", 0, split="B0-Inc1")])
    difference = r"split is B0-Inc2 in .*a \(finetune\) but B0-Inc1 in .*b"
    with pytest.raises(ConfigError, match=difference):
        tables.load(a, b)
    assert tables.main([a, b]) == 2


def test_runs_of_different_evaluation_are_refused(tmp_path):
    a = write_results(tmp_path / "a", fixed_runs())
    b = write_results(tmp_path / "b", [summary("replay", 0, charge_encoder=True)])
    with pytest.raises(ConfigError, match="memory.charge_encoder is False"):
        tables.load(a, b)


def test_settings_that_differ_label_their_rows(tmp_path):
    runs = [summary("finetune", 0, epochs=1, avg=0.4), summary("finetune", 0, epochs=5, avg=0.6),
            summary("joint", 0, epochs=1), summary("joint", 0, epochs=5)]
    table = tables.load(write_results(tmp_path, runs))
    assert table.label_keys == ["train.epochs"]
    assert [(r.strategy, r.labels["train.epochs"]) for r in table.rows] == [
        ("finetune", 1), ("finetune", 5), ("joint", 1), ("joint", 5)]
    assert "| strategy | train.epochs | seeds |" in tables.markdown_table(table)


def test_shards_merge_and_a_run_found_twice_counts_once(tmp_path):
    runs = fixed_runs()
    a = write_results(tmp_path / "shard0", runs[::2])
    b = write_results(tmp_path / "shard1", runs[1::2] + runs[:1])
    table = tables.load(a, b)
    assert [r.seeds for r in table.rows] == [[0, 1, 2], [0, 1]]
    assert table.rows[0].stats["avg_inc_acc"] == pytest.approx((60.0, 10.0))


def test_empty_workdir_is_a_one_line_error(tmp_path, capsys):
    assert tables.main([str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def replay_reference_runs():
    """fixed_runs and replay on seeds 0 and 1 (a[1][1] = 0.8, 0.7): a second possible reference."""
    return fixed_runs() + [summary("replay", 0, avg=0.8, diag=0.8, memory=2_000_000),
                           summary("replay", 1, avg=0.7, diag=0.7, memory=2_000_000)]


def test_the_reference_is_joint_by_default_and_one_implementation():
    assert tables.DEFAULT_REFERENCE == aggregate.DEFAULT_REFERENCE == "joint"
    assert tables.load is aggregate.load and tables.Table is aggregate.Table


def test_reference_replay_measures_intransigence_against_replays_runs(tmp_path):
    workdir = write_results(tmp_path, replay_reference_runs())
    table = tables.load(workdir, reference="replay")
    assert table.reference == "replay"
    # The reference row comes last, as joint does by default.
    finetune, joint, replay = table.rows
    assert [r.strategy for r in table.rows] == ["finetune", "joint", "replay"]
    # a_replay[1][1] - a[1][1]: 0.8 - 0.7 and 0.7 - 0.5 (same seed); seed 2: mean(0.8, 0.7) - 0.6
    assert finetune.stats["intransigence"] == pytest.approx((15.0, 5.0))
    assert finetune.reference_basis == "seed 2 against the mean of replay seeds 0, 1"
    # joint: 0.8 - 0.9 and 0.7 - 0.8; replay against itself: 0
    assert joint.stats["intransigence"] == pytest.approx((-10.0, 0.0))
    assert joint.reference_basis == "same seed"
    assert replay.stats["intransigence"] == pytest.approx((0.0, 0.0))
    text = tables.markdown_table(table)
    assert ("| finetune † | 3 | 60.00 ± 10.00 | 30.00 ± 10.00 | 55.00 ± 0.00 | "
            "-55.00 ± 0.00 | 15.00 ± 5.00 |") in text
    assert "I = mean over t ≥ 1 of a_replay[t][t] − a[t][t]" in text
    assert "a_joint" not in text
    assert ("I compares each run with the replay run of the same seed (†: where no replay run "
            "has that seed, with the mean of the replay seeds: seed 2 against the mean of "
            "replay seeds 0, 1).") in text

    # The default on the same runs: joint, as before; replay 0.9 - 0.8 and 0.8 - 0.7.
    default = tables.load(workdir)
    assert default.reference == "joint"
    assert [r.strategy for r in default.rows] == ["finetune", "replay", "joint"]
    assert default.rows[0].stats["intransigence"] == pytest.approx((25.0, 5.0))
    assert default.rows[1].stats["intransigence"] == pytest.approx((10.0, 0.0))
    assert "a_joint[t][t]" in tables.markdown_table(default)


def test_reference_option_of_the_command(tmp_path, capsys):
    workdir = write_results(tmp_path / "runs", replay_reference_runs())
    assert tables.main([workdir, "--reference=replay", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "15.00 ± 5.00" in out and "a_replay[t][t]" in out and "note:" not in err
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").read_text().splitlines()))
    assert [r["strategy"] for r in rows] == ["finetune", "joint", "replay"]
    assert float(rows[0]["intransigence_pct_mean"]) == pytest.approx(15.0)
    assert [r["reference"] for r in rows] == ["replay"] * 3
    assert rows[1]["reference_basis"] == "same seed"
    latex = (tmp_path / "out" / "table.tex").read_text()
    assert r"a^{\mathrm{replay}}_{t,t}" in latex and "the replay run of the same seed" in latex

    assert tables.main([workdir, "--out", str(tmp_path / "default")]) == 0  # joint by default
    out, err = capsys.readouterr()
    assert "25.00 ± 5.00" in out and "a_joint[t][t]" in out and "note:" not in err


def test_a_reference_without_runs_leaves_the_column_out(tmp_path, capsys):
    workdir = write_results(tmp_path / "runs", fixed_runs())
    table = tables.load(workdir, reference="icarl")
    assert not table.has_reference and not table.has_intransigence
    assert all("intransigence" not in row.stats and row.reference_basis is None
               for row in table.rows)
    text = tables.markdown_table(table)
    assert "I (%)" not in text and "I compares" not in text and "icarl" not in text
    # joint is then an ordinary row, in the order met
    assert [r.strategy for r in table.rows] == ["finetune", "joint"]
    assert tables.main([workdir, "--reference=icarl", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "note: no runs of --reference=icarl (strategies: finetune, joint)" in err
    header = (tmp_path / "out" / "table.csv").read_text().splitlines()[0]
    assert "intransigence" not in header


def test_a_budgeted_reference_compares_at_the_same_budget(tmp_path):
    """Replay at 1 and 2 MB as the reference: each finetune row compares at its own budget."""
    runs = [summary("replay", 0, budget=1_000_000, diag=0.6),
            summary("replay", 1, budget=1_000_000, diag=0.6),
            summary("replay", 0, budget=2_000_000, diag=0.8),
            summary("replay", 1, budget=2_000_000, diag=0.8),
            summary("finetune", 0, budget=1_000_000, diag=0.5),
            summary("finetune", 1, budget=1_000_000, diag=0.4),
            summary("finetune", 0, budget=2_000_000, diag=0.5),
            summary("finetune", 1, budget=2_000_000, diag=0.5),
            summary("finetune", 0, budget=4_000_000, diag=0.5),  # replay has no 4 MB run
            summary("joint", 0)]                                  # nor an unbudgeted one
    table = tables.load(write_results(tmp_path, runs), reference="replay")
    assert [(r.strategy, r.budget) for r in table.rows] == [
        ("finetune", 1_000_000), ("finetune", 2_000_000), ("finetune", 4_000_000),
        ("joint", None), ("replay", 1_000_000), ("replay", 2_000_000)]
    at_1, at_2, at_4, joint, *_ = table.rows
    # 1 MB: 0.6 - 0.5 and 0.6 - 0.4; 2 MB: 0.8 - 0.5 twice (not the mean over replay's budgets)
    assert at_1.stats["intransigence"] == pytest.approx((15.0, math.sqrt(50.0)))
    assert at_2.stats["intransigence"] == pytest.approx((30.0, 0.0))
    assert "intransigence" not in at_4.stats and "intransigence" not in joint.stats
    text = tables.markdown_table(table)
    assert "| joint | — | 1 | 50.00 | 30.00 | 55.00 | -55.00 | — | 1.000 | 1.00 |" in text
    assert "I compares each run with the replay run of the same seed and budget." in text


def test_a_reference_name_is_escaped_in_latex(tmp_path):
    runs = [summary("finetune", 0, diag=0.5), summary("partial_sharing", 0, diag=0.7)]
    table = tables.load(write_results(tmp_path, runs), reference="partial_sharing")
    assert table.rows[0].stats["intransigence"] == pytest.approx((20.0, 0.0))
    latex = tables.latex_table(table)
    assert r"a^{\mathrm{partial\_sharing}}_{t,t}" in latex
    assert r"the partial\_sharing run of the same seed" in latex


def test_stats_option_shows_a_strategys_own_figures(tmp_path, capsys):
    """--stats: strategy_stats figures averaged over seeds; rows without them get blank cells."""
    runs = fixed_runs()
    for run, trained in zip(runs[:3], (1000, 2000, 4500)):
        run["strategy_stats"] = {"params_trained": trained, "note": "not a number"}
    workdir = write_results(tmp_path / "runs", runs)
    assert tables.main([workdir, "--stats=params_trained", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| params_trained |")
    finetune = next(line for line in lines if line.startswith("| finetune"))
    joint = next(line for line in lines if line.startswith("| joint"))
    # mean 2500, sample std sqrt(((-1500)^2 + (-500)^2 + 2000^2) / 2) = 1803.
    assert finetune.endswith("| 2,500 ± 1.8e+03 |") and joint.endswith("|  |")
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").read_text().splitlines()))
    assert float(rows[0]["params_trained_mean"]) == 2500.0
    assert float(rows[0]["params_trained_std"]) == pytest.approx(1802.776, abs=1e-3)
    assert rows[1]["params_trained_mean"] == ""
