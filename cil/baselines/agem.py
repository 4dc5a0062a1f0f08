"""A-GEM (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019): an episodic
memory whose loss may not rise; each step's gradient on new data is projected when it would.

    config.strategies = ("agem",)
    config.memory.exemplars = 1000            # the episodic memory (replay's buffer and fields)

Each step draws ``train.batch_size`` new examples and ``memory_batch_size`` memory examples (as
replay does). The step's gradient g is that of the new examples' loss alone; the reference g_ref
that of the memory examples' loss. When g . g_ref < 0 (the step would raise the memory's loss to
first order) the step uses g - (g . g_ref / g_ref . g_ref) g_ref, else g (the paper's eq. 11):
GEM's projection (cil/baselines/gem.py, cil/training.py ``MemoryConstraints``) with the whole memory
as its one group, where the dual's solution is that closed form. The memory is replay's
(``replay``-style fields: exemplars, selection, class_balanced, memory_batch_size); the first task
trains plainly.

Read against the paper (PyCIL has GEM, not A-GEM):
- The paper's memory holds a fixed number of examples per task, filled at the end of each task;
  cil's is replay's class-balanced buffer (random selection by default), which keeps an equal share
  per class seen: with equal classes per task that is the same split.
- The paper's reference batch (256) is drawn from the whole memory at every step; so is cil's
  (``memory_batch_size``, default ``train.batch_size``).
- Both gradients come from one forward pass over the step's whole batch (new and memory examples),
  each loss weighing the other's examples 0: with BatchNorm the batch statistics mix new and
  memory examples (the paper's networks have none).

Memory: the network and the episodic memory, as replay.
"""

from __future__ import annotations

import jax.numpy as jnp

from cil.baselines.replay import Replay
from cil.training import MemoryConstraints, Objective


class AGEM(Replay):
    name = "agem"

    def replay_objective(self) -> Objective:
        one_group = jnp.zeros(self.spec.num_classes, jnp.int32)
        return Objective(memory_constraints=MemoryConstraints(one_group, num_groups=1))
