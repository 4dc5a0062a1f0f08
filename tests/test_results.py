"""Results files: whole lines only, resume by run id, config snapshots."""

import json

from cil.results import ResultsWriter, read_records, read_summaries, stable_hash


def test_a_line_cut_short_is_dropped_and_never_read(tmp_path):
    writer = ResultsWriter(tmp_path)
    writer.append({"kind": "task", "run_id": "a", "task": 0})
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"kind": "summary", "run_id": "a", "av')  # a crash mid-write
    assert [r["task"] for r in read_records(tmp_path)] == [0]
    assert not ResultsWriter(tmp_path).is_complete("a")
    assert (tmp_path / "results.jsonl").read_text().endswith("}\n")
    ResultsWriter(tmp_path).append({"kind": "summary", "run_id": "a"})
    assert [r["kind"] for r in read_records(tmp_path)] == ["task", "summary"]
    assert ResultsWriter(tmp_path).is_complete("a")


def test_summaries_merge_over_workdirs(tmp_path):
    for shard in ("x", "y"):
        ResultsWriter(tmp_path / shard).append({"kind": "summary", "run_id": shard})
    assert [s["run_id"] for s in read_summaries(tmp_path / "x", tmp_path / "y")] == ["x", "y"]


def test_config_snapshot_keeps_both_when_configs_differ(tmp_path):
    writer = ResultsWriter(tmp_path)
    first = writer.snapshot_config({"a": 1})
    assert writer.snapshot_config({"a": 1}) == first
    second = writer.snapshot_config({"a": 2})
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
    assert json.loads((tmp_path / f"config-{second}.json").read_text()) == {"a": 2}


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
