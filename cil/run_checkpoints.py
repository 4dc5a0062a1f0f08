"""A run's per-task checkpoints, through Orbax: the last two kept, a damaged one moved aside.

    checkpoints = RunCheckpoints(workdir / "checkpoints" / run_id, print, "[replay seed 0]")
    checkpoints.save(progress, state)   # after task t: step t + 1 (progress["next_task"])
    saved = checkpoints.latest(strategy.init(key, spec))   # {"progress", "state"} or None
    checkpoints.delete()                # the run finished (or failed): nothing to resume

Each checkpoint is a step of an ``orbax.checkpoint.CheckpointManager`` in the run's folder: the
leaves of the strategy's state (arrays, NumPy arrays, Python scalars; read back on the host as
NumPy) as an Orbax pytree, and the run's progress (task records, accuracy rows) as JSON, with the
shapes of empty arrays (Orbax saves none; they come back as zeros). The
state's structure (Flax ``State`` objects, tuples, ...) is not saved: ``latest`` puts the leaves
back into the structure of a fresh ``init`` state, which every strategy keeps for the whole run
(its leaves may change shape; a checkpoint with another number of leaves is refused as damaged).
Unlike a pickle, nothing in the folder is code that loading runs, and the format does not depend
on cil's classes. Orbax writes a step to a temporary folder and renames it when complete, so a
step that exists is whole; ``max_to_keep=2`` keeps the one before the latest, where the run
resumes if the latest is damaged (its files cut or overwritten): a damaged step is reported and
moved aside (``<run id>.<step>.damaged-<time>`` beside the folder), never deleted, and the one
before it is tried; with none left the run starts from task 0. Every process of a multi-process
run calls ``save`` (Orbax's primary process writes host data).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from cil import parallel
from cil.results import writing

# What reading a cut or overwritten step raises: Orbax's and TensorStore's errors are ValueErrors
# or OSErrors, JSON's a ValueError; a missing file in the step, FileNotFoundError (an OSError).
DAMAGED = (ValueError, OSError, KeyError, IndexError, TypeError, RuntimeError)


def _orbax():
    import orbax.checkpoint as ocp  # only runs that checkpoint pay for importing it
    return ocp


class RunCheckpoints:
    def __init__(self, folder: Path, report: Callable[[str], None], tag: str):
        # Orbax refuses relative paths (a relative --workdir is the common case).
        self.folder, self.report, self.tag = Path(folder).absolute(), report, tag

    def _manager(self):
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(self.folder, options=options)

    def save(self, progress: dict, state) -> None:
        ocp = _orbax()
        with writing(self.folder), self._manager() as manager:
            leaves = jax.tree.leaves(jax.device_get(state))
            # Orbax refuses arrays with no elements (a buffer of zero slots): their shapes and
            # dtypes go in the JSON, and they come back as zeros.
            empty = {str(i): {"shape": list(np.shape(leaf)), "dtype": str(np.asarray(leaf).dtype)}
                     for i, leaf in enumerate(leaves) if np.size(leaf) == 0}
            manager.save(progress["next_task"], args=ocp.args.Composite(
                state=ocp.args.StandardSave({str(i): leaf for i, leaf in enumerate(leaves)
                                             if str(i) not in empty}),
                progress=ocp.args.JsonSave({"progress": progress, "empty_leaves": empty})))

    def latest(self, template) -> dict | None:
        """The newest readable checkpoint, its state in ``template``'s structure, else None."""
        if not self.folder.exists():
            return None
        ocp = _orbax()
        with self._manager() as manager:
            for step in sorted(manager.all_steps(), reverse=True):
                try:
                    restored = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()))
                    saved = restored["progress"]
                    progress, flat = saved["progress"], dict(jax.device_get(restored["state"]))
                    if not isinstance(progress, dict) or progress.get("next_task") != step:
                        raise ValueError("its progress does not match its step")
                    flat.update({i: np.zeros(e["shape"], e["dtype"])
                                 for i, e in saved["empty_leaves"].items()})
                    treedef = jax.tree.structure(template)
                    if len(flat) != treedef.num_leaves:
                        raise ValueError(f"it holds {len(flat)} arrays where the strategy's state "
                                         f"has {treedef.num_leaves}")
                    state = jax.tree.unflatten(treedef, [flat[str(i)] for i in range(len(flat))])
                    return {"progress": progress, "state": state}
                except DAMAGED as error:  # not ImportError: a missing module is no damage
                    path = self.folder / str(step)
                    aside = self.folder.with_name(
                        f"{self.folder.name}.{step}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                    if parallel.first_process():
                        with writing(aside):
                            os.replace(path, aside)
                    self.report(f"warning: {self.tag} checkpoint {path} is damaged "
                                f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
                                f"moved to {aside}")
        return None

    def delete(self) -> None:
        if parallel.first_process():
            shutil.rmtree(self.folder, ignore_errors=True)
