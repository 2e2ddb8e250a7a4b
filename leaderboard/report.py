"""The leaderboard as one static, self-contained HTML page (design §6): the table with its notes, and per
dataset the qualitative grid (input, each row's map, ground truth on the same slices) and Dice by lesion size.

Images are embedded as ``data:`` URIs and the page references nothing outside itself. A few lines of script
record, once the page has loaded, how many images decoded (``data-images-loaded="k/n"`` on ``<body>``), so a
headless browser can check the page.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from pathlib import Path

import numpy as np

from lesionbench.leaderboard.rescoring import lesion_size_table
from lesionbench.leaderboard.tables import (
    HEADERS,
    MEAN_RANK,
    Leaderboard,
    artifact_path,
    cell,
    data_lines,
    footnotes,
    rank_text,
    row_name,
    run_key,
    seed_key,
)

GRID_ARTIFACT = "grid.png"
TILE_PX = 128  # tiles are shown at this width, pixels kept sharp

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
p, ul { max-width: 1100px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 8px; }
table.leaderboard { border-top: 2px solid #222; border-bottom: 2px solid #222; }
table.leaderboard thead tr:last-child th { border-bottom: 1px solid #222; }
table.leaderboard td { text-align: right; white-space: nowrap; }
table.leaderboard td:first-child, table.leaderboard th:first-child { text-align: left; }
.ci { color: #666; font-size: 85%; }
.notes p, .data li { font-size: 90%; color: #333; }
table.grid img { width: {px}px; image-rendering: pixelated; display: block; }
table.grid th { font-weight: normal; font-size: 90%; max-width: {px}px; }
table.lesions td { text-align: right; }
table.lesions td:first-child { text-align: left; }
""".replace("{px}", str(TILE_PX))

LOADED_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", loaded + "/" + images.length);
});
</script>"""


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(text) -> str:
    return html.escape(str(text))


def table_html(lb: Leaderboard) -> str:
    datasets = list(dict.fromkeys(c[0] for c in lb.columns))
    top = ['<th rowspan="2">label</th>']
    for d in datasets:
        span = sum(c[0] == d for c in lb.columns)
        info = lb.data.get(d, {})
        n, k, prev = (info.get(key, math.nan) for key in ("n_volumes", "n_lesion_volumes", "prevalence"))
        extra = ", ".join(t for t in (f"n = {int(n)}" if not math.isnan(n) else "",
                                      f"{int(k)} with lesions" if not math.isnan(k) else "",
                                      f"{100 * prev:.2f} % lesion" if not math.isnan(prev) else "") if t)
        top.append(f'<th colspan="{span}">{_e(d)}' + (f"<br><small>{_e(extra)}</small>" if extra else "") + "</th>")
    top.append(f'<th rowspan="2">{_e(MEAN_RANK)}</th>')
    second = [f"<th>{_e(HEADERS.get(c[1], c[1]))}</th>" for c in lb.columns]
    rows = []
    for label in lb.means.index:
        cells = []
        for col in lb.columns:
            c = cell(lb, label, col)
            value = f"<strong>{_e(c.value)}</strong>" if c.bold else _e(c.value)
            marker = f"<sup>{_e(c.marker)}</sup>" if c.marker else ""
            interval = f'<br><span class="ci">{_e(c.interval)}</span>' if c.interval else ""
            cells.append(f"<td>{value}{marker}{interval}</td>")
        rank, bold = rank_text(lb, label)
        cells.append(f"<td><strong>{_e(rank)}</strong></td>" if bold else f"<td>{_e(rank)}</td>")
        rows.append(f"<tr><td>{_e(row_name(lb, label))}</td>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="leaderboard" id="leaderboard"><thead><tr>{"".join(top)}</tr>'
            f"<tr>{''.join(second)}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def grid_html(lb: Leaderboard, dataset: str, scratch: Path) -> str:
    """Input, each row's map (its lowest seed) and the ground truth on the same slices, from the runs' grids."""
    from PIL import Image

    from lesionbench.figures import grid_tiles

    runs = lb.runs[lb.runs["tags.dataset"] == dataset]
    columns, inputs, truths, seeds = [], None, None, set()
    for label in lb.means.index:
        rows = runs[runs["tags.label"] == label]
        if rows.empty:
            continue
        run = min((r for _, r in rows.iterrows()), key=run_key)  # lowest seed (a cross-validation's: fold 0)
        path = artifact_path(run, GRID_ARTIFACT, scratch, lb.runs.attrs.get("tracking_uri"))
        if path is None:
            continue
        tiles_in, tiles_map, tiles_truth = grid_tiles(np.asarray(Image.open(path).convert("L")))
        if not tiles_map:
            continue
        if truths is None:
            inputs, truths = tiles_in, tiles_truth
        elif len(tiles_truth) != len(truths) or any(not np.array_equal(a, b) for a, b in zip(tiles_truth, truths)):
            return f"<p>The runs' grids show different slices ({_e(label)} differs); no common grid.</p>"
        columns.append((label, tiles_map))
        seeds.add(str(run["tags.seed"]))
    if not columns:
        return "<p>No qualitative grid: the runs stored none, or the test split has no lesion.</p>"
    head = "<tr><th>input</th>" + "".join(f"<th>{_e(row_name(lb, label))}</th>" for label, _ in columns) + "<th>ground truth</th></tr>"
    body = []
    for i in range(len(truths)):
        imgs = [inputs[i]] + [tiles[i] for _, tiles in columns] + [truths[i]]
        alts = ["input"] + [f"{label} map" for label, _ in columns] + ["ground truth"]
        body.append("<tr>" + "".join(f'<td><img src="{png_data_uri(im)}" alt="{_e(alt)} {i + 1}"></td>'
                                     for im, alt in zip(imgs, alts)) + "</tr>")
    note = (f"<p>Slices chosen from the split alone: the slice with the most lesion voxels in each of the first "
            f"{len(truths)} test volumes with lesions, in split order. Input: FLAIR (else the first modality). Maps of "
            f"seed {', '.join(sorted(seeds, key=seed_key))}, each on its own scale (its 1st–99th percentile on these slices).</p>")
    return note + f'<table class="grid">{head}{"".join(body)}</table>'


def lesion_sizes_html(lb: Leaderboard, dataset: str) -> str:
    lesions = lb.lesions
    if lesions is None or lesions.empty or not (lesions["dataset"] == dataset).any():
        return "<p>No lesion-wise breakdown: no stored maps, or no run has a dice_val threshold (no validation lesion).</p>"
    lesions = lesions[lesions["dataset"] == dataset]
    tables = {}
    for label in lb.means.index:
        mine = lesions[lesions["label"] == label]
        if len(mine):
            tables[label] = lesion_size_table(mine, seeds=mine["seed"].nunique())
    first = next(iter(tables.values()))
    head = "<tr><th>label</th>" + "".join(f"<th>{_e(r['size'])} voxels<br><small>{int(r['lesions'])} lesions</small></th>"
                                          for _, r in first.iterrows()) + "</tr>"
    rows = []
    for label, table in tables.items():
        cells = []
        for _, r in table.iterrows():
            if math.isnan(r["detected"]):
                cells.append("<td>–</td>")
            else:
                cells.append(f"<td>{100 * r['detected']:.0f} % found<br>Dice {r['dice']:.3f}</td>")
        rows.append(f"<tr><td>{_e(row_name(lb, label))}</td>{''.join(cells)}</tr>")
    note = ("<p>Lesions: 3D connected components of the ground truth (face connectivity) in the evaluation space, "
            "binned by size. Each run is thresholded at its own dice_val threshold (chosen on validation voxel labels); "
            "found: the share of lesions with at least one predicted voxel; Dice: lesion-wise Dice, 2|P∩L| / (|P_L| + |L|) "
            "with P_L the predicted components touching the lesion; averaged over lesions and seeds. Runs without a "
            "dice_val threshold (no lesion in the validation split) are left out.</p>")
    return note + f'<table class="lesions">{head}{"".join(rows)}</table>'


def render_html(lb: Leaderboard, title: str = "lesionbench leaderboard") -> str:
    parts = [f"<h1>{_e(title)}</h1>", table_html(lb),
             '<ul class="data">' + "".join(f"<li>{_e(line)}</li>" for line in data_lines(lb)) + "</ul>",
             '<div class="notes">' + "".join(f"<p>{_e(n)}</p>" for n in footnotes(lb)) + "</div>"]
    with tempfile.TemporaryDirectory(prefix="lesionbench-report-") as tmp:
        for dataset in dict.fromkeys(c[0] for c in lb.columns):
            parts.append(f'<section class="dataset" id="dataset-{_e(dataset)}"><h2>{_e(dataset)}</h2>'
                         f"<h3>Qualitative grid</h3>{grid_html(lb, dataset, Path(tmp))}"
                         f"<h3>Dice by lesion size</h3>{lesion_sizes_html(lb, dataset)}</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n{LOADED_CHECK}\n</body></html>\n")
