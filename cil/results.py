"""Results files: ``config.json`` and ``results.jsonl`` (one line per task, one summary per run).

    writer = ResultsWriter(workdir)
    writer.snapshot_config(config)                  # config.json (config-<hash>.json if it differs)
    if not writer.is_complete(run_id): ...          # rerunning skips finished runs
    writer.append({"kind": "task", "run_id": run_id, ...})
    summaries = read_summaries(workdir)             # what tables and plots read

A line is written with one ``write`` of the whole encoded line and flushed to disk; a line cut
short by a crash is removed the next time the file is opened, so readers never see half a line.
A run without a summary line is incomplete: rerunning the same command resumes it from its last
checkpoint. Each invocation is an ``attempt``: task lines carry theirs, the summary lists them all,
so a task line of an interrupted attempt that was later redone can be told apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

RESULTS_FILE = "results.jsonl"


def stable_hash(value, length: int = 12) -> str:
    """A short hash of a JSON-serialisable value, independent of dict order."""
    encoded = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:length]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultsWriter:
    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / RESULTS_FILE
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def snapshot_config(self, config_dict: dict) -> str:
        """Writes the config beside the results; returns its hash (stored in every record)."""
        config_hash = stable_hash(config_dict)
        text = json.dumps(config_dict, indent=2, sort_keys=True, default=str) + "\n"
        main = self.workdir / "config.json"
        if not main.exists() or main.read_text() == text:
            write_atomically(main, text)
        else:  # another config shares this workdir: keep both snapshots
            write_atomically(self.workdir / f"config-{config_hash}.json", text)
        return config_hash

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def is_complete(self, run_id: str) -> bool:
        return any(r["run_id"] == run_id for r in read_records(self.workdir, kind="summary"))


def read_records(workdir, kind: str | None = None) -> list[dict]:
    """Every complete record of ``workdir/results.jsonl`` (of one ``kind`` if given)."""
    path = Path(workdir) / RESULTS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line cut short by a crash
        record = json.loads(line)
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def read_summaries(*workdirs) -> list[dict]:
    """Summary records of every finished run in the given workdirs (shards merge by reading them all)."""
    return [r for w in workdirs for r in read_records(w, kind="summary")]
