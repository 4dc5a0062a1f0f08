"""Results files: ``config.json`` and ``results.jsonl`` (one line per task, one summary per run).

    writer = ResultsWriter(workdir)                 # damaged lines are set aside (see below)
    writer.snapshot_config(config)                  # config.json (config-<hash>.json if it differs)
    if not writer.is_complete(run_id): ...          # rerunning skips finished runs
    writer.append({"kind": "task", "run_id": run_id, ...})
    summaries = read_summaries(workdir)             # what tables and plots read

A line is written with one ``write`` of the whole encoded line and flushed to disk. A run without a
summary line is incomplete: rerunning the same command resumes it from its last checkpoint. Each
invocation is an ``attempt``: task lines carry theirs, the summary lists them all, so a task line of
an interrupted attempt that was later redone can be told apart.

Damage: a line that is not a JSON record (cut short by a crash, or edited by hand) is reported with
its file and line number and skipped by every reader. ``ResultsWriter`` also moves it out of
``results.jsonl`` into ``results.damaged.jsonl`` (its text, line number and when it was found), so
nothing is lost and later runs read a clean file. Appends and that rewrite hold an exclusive lock
on ``results.lock`` (flock), so a run appending from another process never loses a line. Writing in a workdir that is a file, read-only or
full raises ``WorkdirError``, one line naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from cil.errors import WorkdirError

RESULTS_FILE = "results.jsonl"
DAMAGED_FILE = "results.damaged.jsonl"
LOCK_FILE = "results.lock"


@contextlib.contextmanager
def writing(path):
    """Turns an OSError while writing ``path`` into a one-line WorkdirError."""
    try:
        yield
    except OSError as error:
        fix = {errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space on its disk",
               errno.EACCES: "make it writable", errno.EPERM: "make it writable",
               errno.EROFS: "make it writable"}.get(error.errno)
        raise WorkdirError(f"cannot write {path}: {error.strerror or error}; "
                           f"{fix + ' or ' if fix else ''}choose another --workdir") from None


def prepare_workdir(workdir) -> Path:
    """``workdir`` created if needed and checked writable; WorkdirError (one line) otherwise."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; choose another --workdir")
    with writing(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    return workdir


def stable_hash(value, length: int = 12) -> str:
    """A short hash of a JSON-serialisable value, independent of dict order."""
    encoded = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:length]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with writing(path):
        tmp.write_text(text)
        os.replace(tmp, path)


class ResultsWriter:
    """Appends records to ``workdir``/results.jsonl. ``writes=False``: reads only, and every write
    is skipped (the processes of a multi-process run but the first compute the same records)."""

    def __init__(self, workdir, report: Callable[[str], None] = print, writes: bool = True):
        self.workdir = prepare_workdir(workdir)
        self.path = self.workdir / RESULTS_FILE
        self.writes = writes
        if writes:
            self._set_damage_aside(report)

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive use of results.jsonl among processes (a separate lock file: the rewrite
        replaces results.jsonl itself)."""
        with writing(self.workdir / LOCK_FILE), open(self.workdir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _set_damage_aside(self, report) -> None:
        """Moves damaged lines of results.jsonl to results.damaged.jsonl (see the docstring)."""
        if not self.path.exists():
            return
        with self._locked():
            lines, damaged = parse_lines(self.path)
            if damaged:
                self._move_aside(lines, damaged)
        for number, _, problem in damaged:
            report(f"warning: {self.path} line {number} is damaged ({problem}); moved to "
                   f"{self.workdir / DAMAGED_FILE}")

    def _move_aside(self, lines, damaged) -> None:
        found = time.strftime("%Y-%m-%dT%H:%M:%S")
        aside = "".join(json.dumps({"file": RESULTS_FILE, "line": number, "text": text,
                                    "problem": problem, "found": found}) + "\n"
                        for number, text, problem in damaged)
        with writing(self.workdir / DAMAGED_FILE), open(self.workdir / DAMAGED_FILE, "a") as f:
            f.write(aside)
        write_atomically(self.path, "".join(text for _, text, _ in lines))

    def snapshot_config(self, config_dict: dict) -> str:
        """Writes the config beside the results; returns its hash (stored in every record)."""
        config_hash = stable_hash(config_dict)
        if not self.writes:
            return config_hash
        text = json.dumps(config_dict, indent=2, sort_keys=True, default=str) + "\n"
        main = self.workdir / "config.json"
        if not main.exists() or main.read_text() == text:
            write_atomically(main, text)
        else:  # another config shares this workdir: keep both snapshots
            write_atomically(self.workdir / f"config-{config_hash}.json", text)
        return config_hash

    def append(self, record: dict) -> None:
        if not self.writes:
            return
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._locked(), writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def is_complete(self, run_id: str) -> bool:
        return any(r["run_id"] == run_id for r in read_records(self.workdir, kind="summary"))


def parse_lines(path: Path) -> tuple[list[tuple[int, str, dict]], list[tuple[int, str, str]]]:
    """(line number, text, record) of each good line; (line number, text, problem) of the others."""
    good, damaged = [], []
    try:
        content = path.read_text(errors="replace")
    except OSError as error:
        raise WorkdirError(f"cannot read {path}: {error.strerror or error}") from None
    for number, text in enumerate(content.splitlines(keepends=True), 1):
        if not text.endswith("\n"):
            damaged.append((number, text, "cut short"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            damaged.append((number, text, f"not JSON: {error.msg} at column {error.colno}"))
            continue
        if not isinstance(record, dict) or not {"kind", "run_id"} <= set(record):
            damaged.append((number, text, "not a results record (no kind and run_id)"))
            continue
        good.append((number, text, record))
    return good, damaged


def read_records(workdir, kind: str | None = None) -> list[dict]:
    """Every good record of ``workdir/results.jsonl`` (of one ``kind`` if given); damaged lines are
    named on stderr and skipped."""
    path = Path(workdir) / RESULTS_FILE
    if not path.exists():
        return []
    good, damaged = parse_lines(path)
    for number, _, problem in damaged:
        print(f"warning: {path} line {number} is damaged ({problem}); skipped", file=sys.stderr)
    return [record for _, _, record in good if kind is None or record.get("kind") == kind]


def read_summaries(*workdirs) -> list[dict]:
    """Summary records of every finished run in the given workdirs (shards merge by reading them all)."""
    return [r for w in workdirs for r in read_records(w, kind="summary")]
