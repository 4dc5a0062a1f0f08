"""The results page from fixed results files: its tables hold cil.tables' cells, its images are
real PNGs inside the file, nothing is fetched; and headless Chromium renders it (screenshot, DOM).

The Chromium tests are skipped where Debian's ``chromium`` is not installed.
"""

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cil import report, tables
from tests.test_tables import (fixed_runs, memory_aligned_runs, replay_reference_runs, summary,
                               write_results)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_TIMEOUT = 120  # seconds; it takes 1-5 s on the 2-core development machine
WINDOW = (1200, 1400)


def expected_rows(table) -> tuple[list[list[str]], list[list[str]]]:
    """The main and AUC tables, header first, as cil.tables renders their cells for Markdown."""
    main = [[c[0] for c in tables.main_columns(table)],
            *(tables.main_cells(table, row, latex=False) for row in table.rows)]
    auc = [[c[0] for c in tables.auc_columns(table)],
           *(tables.auc_cells(table, row, latex=False) for row in table.auc)]
    return main, auc if table.auc else []


def row_html(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" if i == 0 else
                            f'<{tag} class="num">{html.escape(c)}</{tag}>'
                            for i, c in enumerate(cells)) + "</tr>"


def embedded_pngs(page: str) -> list[Image.Image]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in sources)
    return [Image.open(io.BytesIO(base64.b64decode(s[len(prefix):]))) for s in sources]


def assert_self_contained(page: str) -> None:
    """No script, stylesheet link, frame or URL: every src is a data URI."""
    lowered = page.lower()
    for needle in ("<script", "<link", "<iframe", "http:", "https:", "url(", "@import", "href="):
        assert needle not in lowered, needle
    assert all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', page))


def test_memory_aligned_page_has_both_tables_footnote_and_every_plot(tmp_path):
    table = tables.load(write_results(tmp_path / "runs", memory_aligned_runs()))
    page = report.html_report(table)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    main, auc = expected_rows(table)
    assert row_html(main[0], "th") in page and row_html(auc[0], "th") in page
    for cells in main[1:] + auc[1:]:
        assert row_html(cells) in page
    # replay at 1 MB: Ā over seeds 0 and 1 is 0.5 and 0.3 (tests/test_tables.py)
    replay = table.rows[0]
    assert (replay.strategy, replay.budget) == ("replay", 1_000_000)
    assert replay.stats["avg_inc_acc"] == pytest.approx((40.0, 14.1421356))
    number = tables.number(*replay.stats["avg_inc_acc"], len(replay.runs), 2)
    assert f'<td class="num">{number}</td>' in page
    auc_a = tables.number(*table.auc[0].stats["auc_a"], 2, 4)
    assert f'<td class="num">{auc_a}</td>' in page
    assert f'<p class="note">{html.escape(tables.footnote(table, latex=False))}</p>' in page
    assert page.count("<table>") == 2 and "Accuracy against memory" in page
    # curves (3 budget panels), accuracy vs memory (2 panels), heat maps of replay and joint
    images = embedded_pngs(page)
    assert [im.size for im in images] == [(1260, 320), (840, 320), (420, 320), (420, 320)]
    for im in images:
        assert np.asarray(im.convert("RGB")).std() > 10  # drawn on, not a blank canvas
    assert_self_contained(page)


def test_plain_page_has_no_memory_plot(tmp_path):
    table = tables.load(write_results(tmp_path / "runs", fixed_runs()))
    page = report.html_report(table)
    main, auc = expected_rows(table)
    assert auc == [] and page.count("<table>") == 1
    for cells in main[1:]:
        assert row_html(cells) in page
    assert "60.00 ± 10.00" in page and "finetune †" in page  # test_tables' hand computation
    assert "Accuracy against memory" not in page
    assert len(embedded_pngs(page)) == 3  # curves, heat maps of finetune and joint
    assert_self_contained(page)


def test_text_from_the_results_is_escaped(tmp_path):
    runs = [summary("<b>fine</b>&tune", 0), summary("<b>fine</b>&tune", 1)]
    page = report.html_report(tables.load(write_results(tmp_path / "runs", runs)))
    assert "<b>" not in page and "&lt;b&gt;fine&lt;/b&gt;&amp;tune" in page


def test_command_writes_the_page_merges_shards_and_fails_in_one_line(tmp_path, capsys):
    runs = fixed_runs()
    a = write_results(tmp_path / "shard0", runs[::2])
    b = write_results(tmp_path / "shard1", runs[1::2])
    assert report.main([a, b]) == 0
    assert capsys.readouterr().out == f"wrote {Path(a) / 'report.html'}\n"
    page = (Path(a) / "report.html").read_text(encoding="utf-8")
    merged = tables.load(a, b)
    assert [len(r.runs) for r in merged.rows] == [3, 2]
    for cells in expected_rows(merged)[0][1:]:
        assert row_html(cells) in page
    assert report.main([a, b, "--out", str(tmp_path / "new" / "page.html")]) == 0  # folder made
    assert (tmp_path / "new" / "page.html").read_text(encoding="utf-8") == page
    assert report.main([a, b, "--out", str(tmp_path / "new")]) == 0  # a folder: report.html in it
    assert (tmp_path / "new" / "report.html").read_text(encoding="utf-8") == page
    capsys.readouterr()

    other = write_results(tmp_path / "other", [summary("replay", 0, split="B0-Inc1")])
    blocked = tmp_path / "new" / "page.html" / "report.html"  # page.html is a file
    for argv, message in (([a, other], "cannot put runs of different protocols"),
                          ([str(tmp_path / "empty")], "no finished runs"),
                          ([a, f"--out={blocked}"], f"cannot write {blocked}")):
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_reference_option_gives_the_tables_intransigence(tmp_path):
    workdir = write_results(tmp_path / "runs", replay_reference_runs())
    out = tmp_path / "page.html"
    assert report.main([workdir, "--reference=replay", f"--out={out}"]) == 0
    page = out.read_text(encoding="utf-8")
    table = tables.load(workdir, reference="replay")
    main, _ = expected_rows(table)
    assert row_html(main[0], "th") in page
    for cells in main[1:]:
        assert row_html(cells) in page
    assert "15.00 ± 5.00" in page  # test_tables' hand computation against replay
    assert html.escape("a_replay[t][t]") in page and "a_joint" not in page
    assert report.main([workdir, f"--out={out}"]) == 0  # joint by default
    assert "25.00 ± 5.00" in out.read_text(encoding="utf-8")


def test_python_dash_m_writes_the_page(tmp_path):
    workdir = write_results(tmp_path / "runs", memory_aligned_runs())
    out = tmp_path / "out" / "page.html"
    result = subprocess.run([sys.executable, "-m", "cil.report", workdir, f"--out={out}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}\n"
    assert row_html(expected_rows(tables.load(workdir))[0][1]) in out.read_text(encoding="utf-8")


# ---- rendered by headless Chromium ----

# Injected by the test into a copy of the page (the page itself has no script): once the page has
# loaded, draws every image on a canvas (which decodes it) and counts its distinct colours, then
# writes what the browser made of the images and tables into the DOM. All synchronous: --dump-dom
# does not wait for promises such as img.decode().
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map((img) => {
    const box = img.getBoundingClientRect();
    const colours = new Set();
    if (img.complete && img.naturalWidth > 0) {
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const pixels = new Uint32Array(
        context.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
      for (const pixel of pixels) colours.add(pixel);
    }
    return {alt: img.alt, natural: [img.naturalWidth, img.naturalHeight],
            shown: [box.width, box.height], colours: colours.size};
  });
  const tables = [...document.querySelectorAll("table")].map((table) => ({
    size: [table.getBoundingClientRect().width, table.getBoundingClientRect().height],
    rows: [...table.rows].map((row) => [...row.cells].map((cell) => cell.innerText))}));
  const out = document.createElement("pre");
  out.id = "cil-check";
  out.textContent = JSON.stringify({images, tables});
  document.body.append(out);
});
</script>
<img alt="control: not a PNG" src="data:image/png;base64,AAAAAAAA">
"""


@pytest.fixture
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium): the page was "
                    "checked as text only, not rendered")
    return path


def run_chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium as root, offline, with a new empty profile; fails on a non-zero exit."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    result = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
         "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture
def page(tmp_path) -> tuple[Path, tables.Table]:
    workdir = write_results(tmp_path / "runs", memory_aligned_runs())
    assert report.main([workdir]) == 0
    return Path(workdir) / "report.html", tables.load(workdir)


def test_chromium_renders_the_tables_and_decodes_every_image(chromium, page, tmp_path):
    path, table = page
    text = path.read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"  # a copy elsewhere: the page needs no other file
    checked.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = run_chromium(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                       checked.as_uri()).stdout
    found = re.search(r'<pre id="cil-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    check = json.loads(html.unescape(found[1]))

    *images, control = check["images"]
    # the check can tell a broken image
    assert (control["alt"], control["natural"], control["colours"]) == ("control: not a PNG",
                                                                         [0, 0], 0)
    embedded = embedded_pngs(text)
    assert [tuple(im["natural"]) for im in images] == [png.size for png in embedded]
    for im, png in zip(images, embedded):
        assert 0 < im["shown"][0] <= im["natural"][0] and im["shown"][1] > 0, im
        # decoded to the colours the PNG holds (a plot: white, black, greys, lines, colour map)
        assert im["colours"] > 50, im
        held = len(png.convert("RGBA").getcolors(1 << 24))
        assert abs(im["colours"] - held) <= 0.05 * held, (im, held)  # colour management aside

    main, auc = expected_rows(table)
    assert [t["rows"] for t in check["tables"]] == [main, auc]
    for rendered in check["tables"]:
        assert rendered["size"][0] > 200 and rendered["size"][1] > 20 * len(rendered["rows"])


def test_chromium_screenshot_shows_the_page(chromium, page, tmp_path):
    path, _ = page
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", path.as_uri())
    assert shot.is_file()
    image = Image.open(shot)
    assert image.format == "PNG" and image.size == WINDOW
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not a blank single colour
    ink = (pixels < 128).all(axis=2)  # text and table rules
    colour = pixels.max(axis=2) - pixels.min(axis=2) > 100  # only the plots are coloured
    assert ink.sum() > 2_000 and colour.sum() > 2_000
    # the table is at the top (text in the top quarter), a plot below it (colour lower down)
    quarter = WINDOW[1] // 4
    assert ink[:quarter].sum() > 1_000 and colour[quarter:].sum() > 1_000
