"""Plots from fixed results files: every figure is written as a non-empty PNG and a PDF."""

import pytest
from matplotlib.image import imread

from cil import plots, tables
from cil.errors import DataError
from tests.test_tables import fixed_runs, memory_aligned_runs, write_results


def assert_real_image(path):
    assert path.stat().st_size > 2_000
    if path.suffix == ".pdf":
        assert path.read_bytes().startswith(b"%PDF")
        return
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_classes_seen_follow_the_split():
    assert plots.classes_seen("B0-Inc2", 5) == [2, 4, 6, 8, 10]
    assert plots.classes_seen("B50-Inc10", 6) == [50, 60, 70, 80, 90, 100]
    with pytest.raises(DataError, match="B{m}-Inc{n}"):
        plots.classes_seen("tasks5", 5)


def test_memory_aligned_results_give_every_plot(tmp_path):
    table = tables.load(write_results(tmp_path / "runs", memory_aligned_runs()))
    paths = plots.plot_all(table, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{stem}.{fmt}" for fmt in ("png", "pdf") for stem in (
        "accuracy_curve", "accuracy_vs_memory", "matrix_replay", "matrix_joint"))
    for path in paths:
        assert_real_image(path)


def test_plain_results_give_curves_and_matrices_but_no_memory_plot(tmp_path, capsys):
    workdir = write_results(tmp_path / "runs", fixed_runs())
    assert plots.main([workdir]) == 0
    written = sorted(p.name for p in (tmp_path / "runs" / "plots").iterdir())
    assert "accuracy_vs_memory.png" not in written and "accuracy_curve.png" in written
    assert "wrote" in capsys.readouterr().out


def test_one_runs_heat_map_by_run_id(tmp_path):
    table = tables.load(write_results(tmp_path / "runs", fixed_runs()))
    paths = plots.plot_all(table, tmp_path / "plots", run_id="joint-1-None-B0-Inc2-1-False")
    matrices = [p for p in paths if p.name.startswith("matrix_")]
    assert [p.name for p in matrices] == ["matrix_joint_joint-1-None-B0-Inc2-1-False.png",
                                          "matrix_joint_joint-1-None-B0-Inc2-1-False.pdf"]
    with pytest.raises(DataError, match="no finished run nope"):
        plots.plot_all(table, tmp_path / "plots", run_id="nope")


def test_heat_map_shows_the_matrix(tmp_path):
    [run] = [r for r in fixed_runs() if r["strategy"] == "finetune"][:1]
    [png, _] = plots.plot_matrix(run, tmp_path / "matrix")
    pixels = imread(png)[..., :3]
    # viridis at 95 % (a[0][0]) is yellow and at 40 % (a[1][0]) blue-green: both colours appear
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    yellowish = (red > 0.8) & (green > 0.8) & (blue < 0.3)
    teal = (blue > red + 0.25) & (green > 0.35) & (green < 0.6)
    assert yellowish.sum() > 100 and teal.sum() > 100


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        plots.plot_all(tables.load(tmp_path), tmp_path / "plots")
