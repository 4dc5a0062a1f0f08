"""LwF (Li and Hoiem, "Learning without Forgetting", TPAMI 2017): no exemplars; the network keeps
its old classes' answers by distilling from its own copy taken before the task.

    config.strategies = ("lwf",)
    config.lwf.distill_weight = 3.0            # PyCIL's lamda; the paper's lambda_o is 1

On every task after the first, a step minimises

    cross-entropy over the new task's classes only  +  distill_weight x KD(old classes)

KD is the cross-entropy between the tempered softmax (T = ``temperature``, 2) of the frozen
previous network and of the network being trained, over the classes seen before the task
(cil/training.py ``distillation_loss``, no T^2 factor). The first task is plain training.

Read against the paper and PyCIL's ``models/lwf.py``:
- The paper is multi-head (task-incremental): L_new is the new head's cross-entropy, L_old the
  old heads' distillation, lambda_o = 1. PyCIL's class-incremental version keeps one head and
  takes the cross-entropy over the new classes' logits alone (``logits[:, known:]``, shifted
  targets), which is the same loss on one shared head; that is what ``xent_classes="new"`` does
  (the default). ``"seen"`` takes it over every class seen so far instead.
- ``distill_weight`` defaults to PyCIL's 3 (the issue and the survey's figures use it); set 1 for
  the paper's lambda_o.
- Not implemented: the paper's warm-up (training the new head alone before the whole network),
  which PyCIL leaves out too; PyCIL's per-method recipe (250 epochs, milestones 60/120/180/220)
  is configs/cifar.py's ``lwf.train``.

Memory: the network only. The teacher is the network the task starts from, copied for the task and
dropped after it, so nothing beyond the network is kept from one task to the next.
"""

from __future__ import annotations

from cil.baselines.finetune import Finetune
from cil.fields import Field, Number, OneOf
from cil.strategy import Learned
from cil.training import Distillation, Objective


# Where the cross-entropy of a later task is taken (LwF and EWC in PyCIL: the new classes alone).
XENT_CLASSES = Field("new", OneOf("new", "seen"),
                     "the cross-entropy over the new task's classes, or every class seen")


def first_class(xent_classes: str, num_old: int) -> int:
    """The ``Objective.first_class`` of a task whose first class is ``num_old``."""
    return num_old if xent_classes == "new" else 0


class LwF(Finetune):
    name = "lwf"
    keeps_teacher = True

    @classmethod
    def fields(cls):
        return {
            "temperature": Field(2.0, Number(above=0), "distillation temperature (T)"),
            "distill_weight": Field(3.0, Number(min=0), "lambda: PyCIL 3, the paper 1"),
            "xent_classes": XENT_CLASSES,
        }

    def objective(self, teacher, num_old: int) -> Objective | None:
        """The loss of a task whose first class is ``num_old`` (None for the first task)."""
        if not num_old:
            return None
        cfg = self.config.strategy
        return Objective(first_class=first_class(cfg.xent_classes, num_old),
                         distill=Distillation(teacher, num_old, temperature=cfg.temperature,
                                              weight=cfg.distill_weight))

    def learn(self, state, task, key):
        objective = self.objective(state["net"], task.classes[0])
        net, examples = self.fit(state["net"], task.images, task.labels, key,
                                 task.classes[-1] + 1, task.index, objective)
        return Learned({**state, "net": net}, examples)
