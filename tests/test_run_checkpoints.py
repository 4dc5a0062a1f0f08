"""A run's Orbax checkpoints (cil/run_checkpoints.py): what goes in comes back, in its structure."""

import jax.numpy as jnp
import numpy as np

from cil.run_checkpoints import RunCheckpoints


def test_a_state_comes_back_in_the_template_structure_with_its_empty_arrays(tmp_path):
    state = {"net": (jnp.arange(6.0).reshape(2, 3), np.ones(4, np.uint8)), "t": 3,
             "buffer": np.zeros((0, 8, 8, 1), np.uint8), "nothing": None}
    template = {"net": (jnp.zeros((2, 3)), np.zeros(1, np.uint8)), "t": -1,
                "buffer": np.zeros((0, 8, 8, 1), np.uint8), "nothing": None}
    checkpoints = RunCheckpoints(tmp_path / "run", report=print, tag="[x]")
    for next_task in (1, 2, 3):
        checkpoints.save({"next_task": next_task, "rows": [[0.5]] * next_task}, state)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["2", "3"]  # two kept
    saved = checkpoints.latest(template)
    assert saved["progress"] == {"next_task": 3, "rows": [[0.5]] * 3}
    np.testing.assert_array_equal(saved["state"]["net"][0], np.arange(6.0).reshape(2, 3))
    assert isinstance(saved["state"]["net"], tuple) and saved["state"]["t"] == 3
    assert saved["state"]["buffer"].shape == (0, 8, 8, 1)
    assert saved["state"]["buffer"].dtype == np.uint8 and saved["state"]["nothing"] is None
    checkpoints.delete()
    assert checkpoints.latest(template) is None


def test_a_relative_folder_works(tmp_path, monkeypatch):
    """run.py --workdir=workdir/x: Orbax takes only absolute paths; the checkpoints resolve it."""
    monkeypatch.chdir(tmp_path)
    checkpoints = RunCheckpoints("relative/run", report=print, tag="[x]")
    checkpoints.save({"next_task": 1}, {"w": np.arange(3.0)})
    assert (tmp_path / "relative" / "run" / "1").is_dir()
    assert checkpoints.latest({"w": np.zeros(3)})["progress"] == {"next_task": 1}
