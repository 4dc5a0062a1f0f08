"""Runs the strategies and seeds a config lists on one stream: learn, evaluate, record, resume.

    summaries = run_experiment(config, workdir="/tmp/digits")    # what run.py calls

For each (strategy, seed) not already finished in ``workdir``: ``init``, then per task ``learn`` on
the task's training data, check the memory budget, predict every seen test example, and append a
task line; at the end a summary line (PROTOCOL.md figures). The strategy's state is checkpointed
after every task, so an interrupted run resumes at the next task with the same keys and results.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cil import encoders, evaluation, evaluators, launch, models, monitor, parallel, training
from cil.data import sources, stream as streams
from cil.errors import ConfigError, DivergenceError, RunError
from cil.fields import Field, Flag, Integer, OneOf, Sequence, check
from cil.results import ResultsWriter, stable_hash
from cil.run_checkpoints import RunCheckpoints
from cil.strategy import (MEMORY_FIELDS, Budget, StreamSpec, available_strategies, load_strategy,
                          strategy_config)
from cil.timing import Stopwatch



def fields() -> dict:
    """Every field of an experiment config, each declared beside the code that reads it."""
    return {
        "dataset": sources.FIELDS,
        "stream": streams.FIELDS,
        "features": encoders.FEATURES_FIELDS,
        "model": models.fields("mlp"),  # another network has other options (models.check)
        "train": training.FIELDS,
        "memory": MEMORY_FIELDS,
        "strategies": Field(("finetune", "joint"), Sequence(
            OneOf(*available_strategies()), min_length=1, distinct=True), "what runs"),
        "seeds": Field((0, 1, 2), Sequence(Integer(min=0, max=2**31 - 1), min_length=1,
                                           distinct=True), "one run per strategy and seed"),
        "eval_batch_size": Field(1000, Integer(min=1), "test images per prediction call"),
        "checkpoint": Field(True, Flag(), "save the state after every task, to resume"),
        "evaluators": Field((), Sequence(OneOf(*evaluators.NAMES), distinct=True),
                            "measured beside the accuracy matrix (cil/evaluators.py)"),
        "monitor": monitor.FIELDS,
        "launch": launch.FIELDS,
    }


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Every field against its rule, then what must fit together; ConfigError before any work."""
    if "sweep" in config:  # cil/sweep.py expands a grid into plain configs before they get here
        raise ConfigError("config.sweep declares a grid; run it with run.py (cil.sweep.run_grid)")
    declared = fields()
    unknown = sorted(set(config.keys()) - set(declared) - set(available_strategies()))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; top-level keys are "
                          f"{', '.join(sorted(declared))} and strategy names")
    if "model" not in config:
        raise ConfigError("config lacks model; start from configs/digits.py")
    models.check(config.model)  # by the fields of the network it names
    del declared["model"]
    check({k: v for k, v in config.items() if k in declared}, declared, "")
    for name in config.strategies:
        # A strategy's own section and train overrides (its constructor checks what must fit
        # together there), and its schedules: task 0's and the later tasks'.
        merged = load_strategy(name, config).config
        for task_index in (0, 1):
            training.task_schedule(merged.train, task_index)
    parallel.check_divisible(config.train.batch_size, parallel.data_mesh())


def build_stream(config) -> streams.Stream:
    dataset, encoder_bytes = sources.load(config.dataset), 0
    if config.features.encoder:
        dataset, encoder_bytes = encoders.encode_dataset(dataset, config.features.encoder)
    order = config.stream.class_order
    stream = streams.make_stream(dataset, config.stream.initial, config.stream.increment,
                                 config.stream.class_order_seed, list(order) if order else None)
    return dataclasses.replace(stream, input_encoder_bytes=encoder_bytes)


def stream_spec(stream: streams.Stream, memory: ml_collections.ConfigDict) -> StreamSpec:
    budget = Budget(max_bytes=memory.budget_bytes, max_exemplars=memory.exemplars,
                    charge_encoder=bool(memory.charge_encoder),
                    charge_teacher=bool(memory.charge_teacher))
    return StreamSpec(num_classes=stream.num_classes, image_shape=stream.image_shape,
                      tasks=stream.tasks, train_sizes=stream.task_sizes("train"), budget=budget,
                      dataset_name=stream.dataset_name, input_dtype=stream.train_images.dtype.name,
                      input_encoder_bytes=stream.input_encoder_bytes)


def stream_identity(config, stream: streams.Stream) -> dict:
    """What makes two runs comparable: the same data, split and class order."""
    return {"dataset": stream.dataset_name, "split": stream.split_name,
            "class_order_seed": config.stream.class_order_seed,
            "class_order": list(stream.class_order), "num_tasks": stream.num_tasks}


# Fields added after runs were recorded: left out of a run's id while at their default, so the runs
# recorded before them keep their ids (a rerun skips or resumes them).
LATER_FIELDS = {("features", "encoder"): "", ("dataset", "held_out"): 0}


def run_config(name: str, config) -> dict:
    """The settings one strategy's run depends on (its own section, model, training, memory...)."""
    merged = strategy_config(name, config).to_dict()
    for (section, field), default in LATER_FIELDS.items():
        if merged.get(section, {}).get(field, default) == default:
            merged.get(section, {}).pop(field, None)
            if not merged.get(section, True):
                merged.pop(section)
    # What is printed, launched or measured beside the matrix does not change what is learned.
    for key in ("strategies", "seeds", "monitor", "launch", "evaluators", *available_strategies()):
        merged.pop(key, None)
    return merged


def device_description() -> dict:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "host": platform.node(), "cpu_count": os.cpu_count(),
            "usable_cores": parallel.usable_cores()}


def run_experiment(config: ml_collections.ConfigDict, workdir: str,
                   progress: Callable[[str], None] = print,
                   runs: list[tuple[str, int]] | None = None,
                   failures: list[str] | None = None) -> list[dict]:
    """Every (strategy, seed) of ``config``, or only the pairs in ``runs`` (one shard of a grid).

    A run that fails (``RunError``: over budget, diverged) writes no summary and the others still
    run; then a RunError names every failed run, or, when ``failures`` is given, their messages
    are appended to it and the summaries of the others returned.
    """
    validate_config(config)
    stream = build_stream(config)
    spec = stream_spec(stream, config.memory)
    writer = ResultsWriter(workdir, report=progress, writes=parallel.first_process())
    config_hash = writer.snapshot_config(config.to_dict())
    identity = stream_identity(config, stream)
    progress(f"{stream.dataset_name} {stream.split_name}: {stream.num_tasks} tasks, "
             f"{stream.num_classes} classes, {len(stream.train_labels)} train / "
             f"{len(stream.test_labels)} test images {stream.image_shape}; "
             f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")
    summaries, failed = [], []
    for name in config.strategies:
        seeds = [s for s in config.seeds if runs is None or (name, s) in runs]
        if not seeds:
            continue
        strategy = load_strategy(name, config)
        settings = run_config(name, config)
        for seed in seeds:
            run_id = stable_hash({"stream": identity, "config": settings, "seed": seed})
            if writer.is_complete(run_id):
                progress(f"[{name} seed {seed}] already in {workdir}, skipped")
                continue
            header = {"run_id": run_id, "config_hash": config_hash, "strategy": name,
                      "seed": seed, **identity}
            run = RunLoop(strategy, stream, spec, config, header, writer, Path(workdir), progress)
            try:
                summaries.append(run.run(settings))
            except RunError as error:
                failed.append(error)
                progress(f"[{name} seed {seed}] failed: {error}")
    if failures is not None:
        failures.extend(str(error) for error in failed)
    elif len(failed) == 1:
        raise failed[0]
    elif failed:
        raise RunError(f"{len(failed)} runs failed (the others finished): "
                       f"{'; '.join(map(str, failed))}")
    return summaries


class RunLoop:
    """One (strategy, seed) over the stream, resumable from its per-task checkpoint."""

    def __init__(self, strategy, stream, spec, config, header, writer, workdir, progress):
        self.strategy, self.stream, self.spec, self.config = strategy, stream, spec, config
        self.header, self.writer, self.progress = header, writer, progress
        self.tag = f"[{header['strategy']} seed {header['seed']}]"
        self.checkpoints = RunCheckpoints(workdir / "checkpoints" / header["run_id"], progress,
                                          self.tag)
        self.logdir = (workdir / "tensorboard"
                       / f"{header['strategy']}_seed{header['seed']}_{header['run_id'][:8]}")

    def run(self, settings: dict) -> dict:
        init_key, tasks_key = jax.random.split(jax.random.key(self.header["seed"]))
        with Stopwatch() as init_watch:
            state = self.strategy.init(init_key, self.spec)
        progress = {"next_task": 0, "rows": [], "A": [], "tasks": [], "attempts": [],
                    "init_compile_seconds": init_watch.compile_seconds}
        saved = self.checkpoints.latest(state)
        if saved is not None:
            progress, state = saved["progress"], saved["state"]
            self.progress(f"{self.tag} resuming at task {progress['next_task']}")
        # Each invocation is an attempt: task lines name theirs; the summary lists all of them.
        progress["attempt"] = uuid.uuid4().hex[:8]
        progress["attempts"].append(progress["attempt"])
        self.monitor = monitor.Monitor(self.config.monitor, self.tag, self.logdir, self.progress,
                                       progress.get("epochs_trained", 0))
        try:
            for t in range(progress["next_task"], self.stream.num_tasks):
                state, record = self._task(state, t, jax.random.fold_in(tasks_key, t), progress)
                progress["rows"].append(record["acc_row"])
                progress["A"].append(record["A"])
                progress["tasks"].append(record)
                progress["next_task"] = t + 1
                progress["epochs_trained"] = self.monitor.epochs_trained
                self._save_checkpoint(progress, state)
        except RunError as error:
            self._fail(progress, error)
            raise
        finally:
            self.monitor.close()
        summary = self._summary(progress, settings)
        self.writer.append(summary)
        self.checkpoints.delete()
        self.progress(f"{self.tag} done: avg_inc_acc {summary['avg_inc_acc']:.4f}, last_acc "
                      f"{summary['last_acc']:.4f}, forgetting {summary['forgetting']:.4f}, "
                      f"train {summary['train_seconds']:.1f}s")
        return summary

    def _task(self, state, t, key, progress):
        task = self.stream.train_task(t)
        with Stopwatch() as train_watch, self.monitor.task(t, self.stream.num_tasks):
            try:
                learned = self.strategy.learn(state, task, key)
            except DivergenceError as error:
                raise DivergenceError(f"{self.tag} task {t + 1}/{self.stream.num_tasks}: {error}; "
                                      f"no summary is written") from None
            state = jax.block_until_ready(learned.state)
        check_finite(state, f"{self.tag} task {t + 1}/{self.stream.num_tasks}")
        report = self.strategy.memory(state)
        report = report._replace(  # the frozen encoder of config.features, if any
            encoder_params=report.encoder_params + self.spec.input_encoder_bytes)
        evaluation.check_budget(report, self.spec.budget, self.header["strategy"], t)
        test = self.stream.test_seen(t)
        num_seen = self.stream.seen_classes(t)
        names, seen_tasks = tuple(self.config.evaluators), self.stream.tasks[: t + 1]
        within = (evaluators.task_masks(test.labels, seen_tasks, self.spec.num_classes)
                  if "task_given" in names else None)
        with Stopwatch() as eval_watch:
            predictions, task_given = evaluation.predict_seen_and_within(
                self.strategy, state, test.images, num_seen, self.config.eval_batch_size, within)
            nme = (evaluators.nme_predictions(self.strategy, state, test.images, num_seen,
                                              self.config.eval_batch_size)
                   if "nme" in names else None)
        figures = evaluators.run_evaluators(names, predictions, task_given, test.labels,
                                            seen_tasks, nme)
        row, A_t = evaluation.accuracy_row(predictions, test.labels, seen_tasks)
        record = {
            "kind": "task", **self.header, "attempt": progress["attempt"], "task": t,
            "num_seen_classes": num_seen, "acc_row": row, "A": A_t,
            "memory": report._asdict(),
            "charged_bytes": report.charged_bytes(self.spec.budget),
            "trained_examples": learned.trained_examples,
            "train_losses": self.monitor.task_losses,
            **({"evaluations": figures} if names else {}),
            "strategy_stats": self.strategy.extras(state),
            "train_seconds": train_watch.seconds, "eval_seconds": eval_watch.seconds,
            "compile_seconds": train_watch.compile_seconds + eval_watch.compile_seconds,
        }
        self.writer.append(record)
        self.monitor.task_done(t, row, A_t, record["charged_bytes"] / 1e6)
        rate = learned.trained_examples / max(train_watch.seconds, 1e-9)
        self.progress(f"{self.tag} task {t + 1}/{self.stream.num_tasks}: A {A_t:.4f}  "
                      f"a {' '.join(f'{a:.2f}' for a in row)}  train {train_watch.seconds:.2f}s "
                      f"({rate:,.0f} img/s, compile {record['compile_seconds']:.2f}s)  "
                      f"memory {record['charged_bytes'] / 1e6:.3f} MB")
        return state, record

    def _fail(self, progress, error) -> None:
        """A run that cannot finish (over budget, diverged) leaves no result: a ``failed`` line
        marks its task lines as a failed attempt's, and its checkpoints go (a rerun starts over)."""
        self.writer.append({"kind": "failed", **self.header, "attempt": progress["attempt"],
                            "error": str(error),
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.checkpoints.delete()

    def _summary(self, progress, settings) -> dict:
        tasks = progress["tasks"]
        train_seconds = sum(r["train_seconds"] for r in tasks)
        trained = sum(r["trained_examples"] for r in tasks)
        memory_by_category = {k: max(r["memory"][k] for r in tasks) for k in tasks[0]["memory"]}
        names = tuple(self.config.evaluators)
        evaluations, flat = evaluators.summarize(names, tasks)
        return {
            "kind": "summary", **self.header, "attempts": progress["attempts"],
            "acc_matrix": progress["rows"], "A": progress["A"],
            **evaluation.summary_metrics(progress["rows"], progress["A"]),
            "memory_bytes": max(r["charged_bytes"] for r in tasks),
            "memory_by_category": memory_by_category,
            "train_seconds": train_seconds,
            "eval_seconds": sum(r["eval_seconds"] for r in tasks),
            "compile_seconds": progress["init_compile_seconds"] + sum(r["compile_seconds"] for r in tasks),
            "train_seconds_per_task": [r["train_seconds"] for r in tasks],
            "trained_examples": trained,
            "train_images_per_second": trained / max(train_seconds, 1e-9),
            "strategy_stats": tasks[-1].get("strategy_stats", {}),  # none before 2026-12-03
            **({"evaluations": evaluations, **flat} if names else {}),
            "device": device_description(), "config": settings,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _save_checkpoint(self, progress, state) -> None:
        if self.config.checkpoint:
            self.checkpoints.save(progress, state)


def check_finite(state, where: str) -> None:
    """DivergenceError if a floating-point array of ``state`` holds a NaN or an infinity: a
    backstop for strategies whose training does not check its loss (cil/training.py does)."""
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)
              if jnp.issubdtype(getattr(leaf, "dtype", np.int32), jnp.inexact)]
    if not leaves:
        return
    # One transfer for all the flags (the leaves may live on different devices).
    finite = np.asarray(jax.device_get([jnp.isfinite(leaf).all() for _, leaf in leaves]))
    if not finite.all():
        path = jax.tree_util.keystr(leaves[int(np.argmin(finite))][0])
        raise DivergenceError(f"{where}: the state's {path} holds NaN or infinite values "
                              f"(training diverged, or the data holds them); no summary is "
                              f"written")
