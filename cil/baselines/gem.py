"""GEM (Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017):
an episodic memory with one constraint per past task: no step may raise any past task's loss.

    config.strategies = ("gem",)
    config.memory.exemplars = 2000            # the episodic memory (replay's buffer and fields)
    config.gem.margin = 0.0                   # the GEM code's memory_strength (0.5 in its runs)

Each step draws ``train.batch_size`` new examples and ``memory_batch_size`` memory examples (as
replay does). g is the gradient of the new examples' loss, g_k that of the memory examples of past
task k. When some g . g_k < 0, the step takes the z closest to g with z . g_k >= 0 for every k:
the quadratic program of the paper's eq. 10-12, solved on the device in its dual (eq. 13, a
small non-negative quadratic program, one variable per past task) by projected Gauss-Seidel
(cil/training.py ``MemoryConstraints``, ``solve_memory_dual``). A-GEM (cil/baselines/agem.py) is
the same projection with the whole memory as one constraint. The first task trains plainly.

Each example's loss is the cross-entropy over its own task's classes (``within_task``): the new
examples' over the new task's classes, task k's exemplars' over task k's; the paper's losses are
per task (its CIFAR-100 runs give the task), and PyCIL masks the logits the same way
(``pred_[:, :k * inc]`` and ``pred_[:, (k + 1) * inc:]`` set to -1e11). ``within_task=False``
takes every loss over the seen classes, as A-GEM does.

Read against the paper, the authors' code (facebookresearch/GradientEpisodicMemory) and PyCIL's
``models/gem.py`` (commit 87cc411):
- The constraint's right-hand side: the paper's dual is v >= 0 (``margin`` 0, PyCIL's too); the
  authors' code bounds it by ``memory_strength`` (0.5 in their scripts) and adds 1e-3 to the
  Gram matrix's diagonal; ``margin`` is that bound, the diagonal is not offered.
- Each task's gradient: the paper and PyCIL take it on the task's whole memory at every step
  (PyCIL: 2,000 / classes-seen exemplars a class, one forward and backward pass per past task);
  cil on the task's part of the step's memory batch (``memory_batch_size``, default
  ``train.batch_size``, spread over the past tasks), with one forward pass and one vmapped
  backward pass per task. A task with no exemplar in a step's batch has no constraint that step.
- The dual is solved to a fixed number of sweeps (``DUAL_SWEEPS``), not by quadprog's exact
  active-set method; tests/test_gem.py checks it against an exact solution. A step costs one
  forward pass and one backward pass per past task (T - 1 groups of gradients held at once).
- The memory is replay's class-balanced buffer (selection as ``replay``'s fields; PyCIL herds);
  the paper keeps a fixed number of the latest examples per task.

Memory: the network and the episodic memory, as replay.
"""

from __future__ import annotations

import jax.numpy as jnp

from cil.baselines.replay import Replay
from cil.fields import Field, Flag, Number
from cil.training import MemoryConstraints, Objective


class GEM(Replay):
    name = "gem"

    @classmethod
    def fields(cls):
        return {
            **super().fields(),
            "margin": Field(0.0, Number(min=0), "lower bound of the dual variables (the "
                            "paper and PyCIL: 0; the authors' runs: 0.5)"),
            "within_task": Field(True, Flag(), "each example's loss over its own task's "
                                 "classes (paper, PyCIL), else over the seen classes"),
        }

    def replay_objective(self) -> Objective:
        cfg = self.config.strategy
        # The last task's exemplars never train anything: one group per task before it.
        return Objective(memory_constraints=MemoryConstraints(
            jnp.asarray(self.spec.task_of_class, jnp.int32),
            num_groups=max(self.spec.num_tasks - 1, 1), within_group=cfg.within_task,
            margin=cfg.margin))
