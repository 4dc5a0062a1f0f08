"""What a run shows while it trains: epoch progress lines and, on request, TensorBoard curves.

    python run.py --config=configs/cifar.py --config.monitor.tensorboard=True --workdir=/tmp/c
    tensorboard --logdir=/tmp/c/tensorboard        # one run per strategy and seed

    monitor = Monitor(config.monitor, "[replay seed 0]", logdir, print, epochs_trained=0)
    with monitor.task(t, num_tasks):   # RunLoop wraps each strategy.learn in this
        strategy.learn(...)            # every Trainer.fit epoch calls epoch_done(...)
    monitor.task_done(t, acc_row, A, charged_mb)
    monitor.close()

``config.monitor`` (``FIELDS``): ``progress_seconds``: while a task trains, a line at most every
that many seconds (0: every epoch), ``[replay seed 0] task 2/5 epoch 40/170: loss 0.5321 lr 0.1
1,234 img/s``, so 170 epochs a task never look frozen; a quick task (under that time) prints none.
``tensorboard``: event files under ``<workdir>/tensorboard/<strategy>_seed<seed>_<run id>/``,
written through ``clu.metric_writers`` (off by default: importing TensorFlow for it takes seconds):
per epoch (step = epochs trained so far in the run, every ``Trainer.fit`` call of every task
counted) ``train/loss``, ``train/learning_rate``, ``train/images_per_second``, ``train/task``; per
task (step = the task index) ``eval/A`` and ``eval/task_<j>`` (a[t][j], PROTOCOL.md) and
``memory/charged_mb``. The epoch count is checkpointed with the run, so a resumed run continues
its curves where they stopped.

The harness and the trainer do not know each other: ``RunLoop`` makes the monitor current for the
task (a context variable) and ``Trainer.fit`` reports to whichever is current, if any (none in a
test that calls a strategy directly, or in pretraining, which prints its own epoch lines).
None of this changes a result, so ``config.monitor`` is not part of a run's identity.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from pathlib import Path
from typing import Callable

import jax

from cil.errors import ConfigError
from cil.fields import Field, Flag, Number

FIELDS = {
    "progress_seconds": Field(30.0, Number(min=0), "at most one epoch line per this many "
                                                   "seconds of a task's training (0: every epoch)"),
    "tensorboard": Field(False, Flag(), "write TensorBoard curves under <workdir>/tensorboard"),
}

_current: contextvars.ContextVar["Monitor | None"] = contextvars.ContextVar("monitor", default=None)


def epoch_done(epoch: int, epochs: int, loss: float, learning_rate: float, examples: int) -> None:
    """Called by ``Trainer.fit`` after each epoch (``examples`` trained in it); reaches the
    monitor of the task being learned, if a run loop set one."""
    monitor = _current.get()
    if monitor is not None:
        monitor.epoch(epoch, epochs, loss, learning_rate, examples)


def tensorboard_writer(logdir: Path):
    """A clu SummaryWriter on ``logdir`` (TensorFlow's event files), or a one-line error."""
    try:
        from clu import metric_writers
    except ImportError as error:
        raise ConfigError(f"monitor.tensorboard=True needs clu and tensorboard ({error}); "
                          f"pip install -r requirements.txt") from None
    return metric_writers.SummaryWriter(str(logdir))


class Monitor:
    """One run's progress lines and curves; ``epochs_trained``: where a resumed run's curves go on."""

    def __init__(self, config, tag: str, logdir: Path, progress: Callable[[str], None],
                 epochs_trained: int = 0):
        self.tag, self.progress = tag, progress
        self.every = float(config.progress_seconds)
        self.epochs_trained = int(epochs_trained)
        # One writer per run, on the first process only (several processes share a workdir).
        self.writer = (tensorboard_writer(logdir)
                       if config.tensorboard and jax.process_index() == 0 else None)
        self.where, self.task_index, self.task_losses = "", 0, []

    @contextlib.contextmanager
    def task(self, t: int, num_tasks: int):
        """Makes this monitor the one ``epoch_done`` reaches while task ``t`` is learned."""
        self.where, self.task_index = f"task {t + 1}/{num_tasks}", t
        self.last_line = self.last_epoch_end = time.perf_counter()
        self.examples_since_line = 0
        self.task_losses = []  # every epoch's mean loss, every fit call of the task in turn
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def epoch(self, epoch: int, epochs: int, loss: float, learning_rate: float,
              examples: int) -> None:
        now = time.perf_counter()
        rate = examples / max(now - self.last_epoch_end, 1e-9)
        self.last_epoch_end = now
        self.examples_since_line += examples
        self.task_losses.append(float(loss))
        if self.writer is not None:
            self.writer.write_scalars(self.epochs_trained, {
                "train/loss": loss, "train/learning_rate": learning_rate,
                "train/images_per_second": rate, "train/task": self.task_index})
        self.epochs_trained += 1
        if now - self.last_line >= self.every and epoch + 1 < epochs:
            rate = self.examples_since_line / max(now - self.last_line, 1e-9)
            self.progress(f"{self.tag} {self.where} epoch {epoch + 1}/{epochs}: loss {loss:.4f}  "
                          f"lr {learning_rate:g}  {rate:,.0f} img/s")
            self.last_line, self.examples_since_line = now, 0

    def task_done(self, t: int, acc_row, A: float, charged_mb: float) -> None:
        if self.writer is None:
            return
        scalars = {"eval/A": A, "memory/charged_mb": charged_mb}
        scalars.update({f"eval/task_{j}": a for j, a in enumerate(acc_row)})
        self.writer.write_scalars(t, scalars)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
