"""MEMO (Zhou, Wang, Ye and Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient
Class-Incremental Learning", ICLR 2023): DER with the shallow stages shared. The network's first
stages (the generalized blocks) are one trunk for every task; each task adds a copy of the deep
stages only (a specialized block), and one classifier reads the specialized blocks' features side
by side. The rest is DER's: the auxiliary classifier, exemplars by herding, weight aligning.

    config.strategies = ("memo",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen
    config.memo = ConfigDict({"shared_stages": None, "train_shared": True})

``shared_stages``: how many of ``config.model``'s stages (cil/models/networks.py: a network is a
list of stages) form the trunk. Unset: all but the last parameterised stage, and for a ResNet all
but its last width group (the stages from the last block that changes the shape on), so that
resnet32 (stages: the stem, 5 blocks of 16 channels, 5 of 32, 5 of 64, global pooling) shares the
stem and the first 10 blocks, PyCIL's ``memo_resnet32`` split (``GeneralizedResNet_cifar``: conv,
stage_1, stage_2; ``SpecializedResNet_cifar``: stage_3 and the pooling), and resnet18 /
resnet18_imagenet / resnet50_imagenet share everything before ``layer4``, as PyCIL's
``memo_resnet18``. The MLP (one stage per hidden layer) shares all hidden layers but the last:
with one hidden layer (tests' tiny MLP) nothing is shared and MEMO is DER. 0 is DER itself.

``train_shared`` is PyCIL's ``train_base``, True in its ``exps/memo.json``: the trunk keeps
training in every task, in training mode (batch statistics, running averages updated), its
gradient coming through every active specialized block (the frozen ones included, as PyCIL's
autograd does). False: trained at task 0 only, then its parameters frozen and its BatchNorm in
evaluation mode (PyCIL's ``requires_grad = False`` and ``.eval()`` in ``after_task``).

Task t goes as DER's (cil/baselines/der.py), with "backbone" read as "specialized block": block t
starts as a copy of block t - 1; the classifier keeps its old block and draws the rest; a fresh
auxiliary classifier over block t's features (the new classes + 1 "old" class, weight
``aux_weight``, none at task 0); training on the task's data and every exemplar as one set; the
old blocks frozen in evaluation mode; weight aligning after every task but the first; herding on
the concatenated specialized features. The code is DER's: ``DERNet`` with a ``trunk`` in front of
its stacked slots (``MEMO`` only says how many stages are shared and whether they train).

Read against the paper (arXiv 2205.13218) and PyCIL (G-U-N/PyCIL, commit 87cc411:
``models/memo.py``, ``convs/memo_cifar_resnet.py``, ``convs/memo_resnet.py``, ``utils/inc_net.py``
``AdaptiveNet``, ``exps/memo.json``), the authors' own release; cil follows PyCIL:
- Missing: PyCIL's ``train_adaptive`` (old specialized blocks trained too; False in its config):
  they are always frozen, in evaluation mode, as with PyCIL's default.
- Missing: PyCIL's ``skip`` (task 0 loaded from a finetune checkpoint): task 0 is trained.
- PyCIL's ResNet-32 shortcuts are parameter-free (option A: strided subsampling, zero channels);
  cil's resnet32 projects with a 1x1 conv + BatchNorm (cil/models/networks.py), so a specialized
  block of cil's resnet32 has slightly more parameters than PyCIL's. The split is the same.
- The new classifier weights, the auxiliary classifier, weight aligning and herding: exactly as
  DER's in cil, since PyCIL's ``AdaptiveNet`` does what its ``DERNet`` does (der.py's docstring
  lists how cil's DER departs from PyCIL: exemplar leftover slots, the recipe in config.train).
- Every training step runs all T specialized slots (fixed shapes; DER's price), on the trunk's one
  output. With ``train_shared=False`` the trunk runs twice in training steps (training and
  evaluation mode, the task picking one), so that every task still runs one compiled step.

Measured (2026-12-03, seeds 0-5, Split-Digits, 5 tasks of 10 epochs at lr 0.2, 200 exemplars,
an MLP of two hidden layers of 32, the first shared; tests/test_memo.py): old-task mean at the
end 0.609-0.779 with the shared layer trained (the default), 0.318-0.701 with it frozen after
task 0 (``train_shared=False``). On tests/test_baselines.py's tiny MLP (one hidden layer) the
default split shares nothing and MEMO is DER, number for number.

Memory (PROTOCOL.md), by what is active after the task, as DER: ``learner_params`` = the trunk
(once, from task 0 on) + the active specialized blocks + the classifier's block of their features
x seen classes (and biases); ``side_state`` = the trunk's and the active blocks' BatchNorm
statistics, the active counter, the buffer's counters; ``exemplars`` as Replay; the auxiliary
classifier and the inactive slots are not charged. ``extras``: DER's (active blocks, feature
width, parameter bytes) and ``shared_stages``.
"""

from __future__ import annotations

import jax
from flax import nnx

from cil.baselines.der import DER
from cil.errors import ConfigError
from cil.fields import Field, Flag, Integer, Optional
from cil.models.networks import Network
from cil.strategy import StreamSpec


def _parameterised(stage) -> bool:
    return bool(jax.tree.leaves(nnx.state(stage, nnx.Param)))


def default_shared_stages(network: Network) -> int:
    """All stages before the last parameterised one; when that one is a residual block, all
    stages before the first block of its width group (the last block with a projection shortcut,
    i.e. the last that changes the shape): PyCIL's generalized / specialized split."""
    stages = list(network.stages)
    parameterised = [i for i, stage in enumerate(stages) if _parameterised(stage)]
    if not parameterised:
        return 0
    split = parameterised[-1]
    while (split > 0 and getattr(stages[split], "project", True) is None
           and hasattr(stages[split - 1], "project")):
        split -= 1  # a block keeping the shape: its group started earlier
    return split


class MEMO(DER):
    name = "memo"

    def __init__(self, config):
        super().__init__(config)
        self._shared = {}

    @classmethod
    def fields(cls):
        return {
            **DER.fields(),
            "shared_stages": Field(None, Optional(Integer(min=0)),
                                   "stages of config.model shared by every task (the "
                                   "generalized blocks); unset: all but the last parameterised "
                                   "stage, or a ResNet's last width group (PyCIL's split)"),
            "train_shared": Field(True, Flag(), "the shared stages keep training after task 0, "
                                  "in training mode (PyCIL's train_base, true in its config); "
                                  "false: frozen, evaluation mode"),
        }

    def shared_stages(self, spec: StreamSpec) -> int:
        if spec not in self._shared:
            network = nnx.eval_shape(lambda: self.backbone_network(spec, jax.random.key(0)))
            stages = list(network.stages)
            last = max((i for i, stage in enumerate(stages) if _parameterised(stage)), default=-1)
            shared = self.config.strategy.shared_stages
            if shared is None:
                shared = default_shared_stages(network)
            elif shared > max(last, 0):
                raise ConfigError(
                    f"memo.shared_stages = {shared}, but {self.config.model.name}'s stages "
                    f"{last + 1} on have no parameters: at most {max(last, 0)} stages can be "
                    f"shared, leaving each task a specialized block to train")
            self._shared[spec] = int(shared)
        return self._shared[spec]

    def train_shared(self) -> bool:
        return bool(self.config.strategy.train_shared)

    def extras(self, state):
        return {**super().extras(state), "shared_stages": self.shared_stages(self.spec)}
