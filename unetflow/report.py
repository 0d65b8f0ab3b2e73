"""The comparison report: several evaluated runs side by side, as Markdown and HTML with PNG plots.

Contents: the metrics table (AP at 0.5 / 0.75 / 0.9, mean F1 over 0.5:0.95, precision, recall,
error categories), per-modality tables when the manifest has a ``modality`` column, the spread
(mean, sd, range) over runs of the same task such as several seeds, paired per-image differences
(each task against the first, run by run, or each run against the first; Wilcoxon signed-rank test),
AP against the IoU threshold, error categories, example overlays of true and predicted outlines,
and flow colour wheels of the flow runs.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from .io import atomic_write, read_image, read_labels
from .rundir import RunDir

__all__ = ["compare_runs"]

logger = logging.getLogger(__name__)

COLUMNS = [("AP@0.5", "ap50"), ("AP@0.75", "ap75"), ("AP@0.9", "ap90"), ("mean F1 0.5:0.95", "mean_f1")]
ERRORS = ("missed", "extra", "merges", "splits")


#: Side (px) of the native-resolution crop shown under the thumbnail of a larger example image.
EXAMPLE_CROP = 256


def figure_stem(name: str) -> str:
    """A file-name stem for a figure of image `name`, unique whatever the names: a readable
    prefix and a hash of the whole name (images of one screen share long prefixes)."""
    import hashlib
    import re

    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:32]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _load_eval(run_dir: Path, split: str, volumes: str = ""):
    rd = RunDir(run_dir)
    return rd.eval_summary(split, volumes=volumes), rd.eval_table(split, volumes=volumes)


def _label(run_dir: Path, summary) -> str:
    return f"{run_dir.name} ({summary['task']})"


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _savefig(fig, path):
    import matplotlib.pyplot as plt
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight"))
    plt.close(fig)


def _plots(runs, out: Path, split: str, volumes: str = ""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .flows import flows_to_rgb, masks_to_flows
    from .tasks import get_task

    files = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run_dir, summary, _ in runs:
        ious = sorted(summary["by_iou"], key=float)
        ax.plot([float(i) for i in ious], [summary["by_iou"][i]["ap"] for i in ious], "o-",
                label=_label(run_dir, summary))
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP = TP / (TP + FP + FN)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, out / "ap_vs_iou.png")
    files.append(("AP against the IoU threshold", "ap_vs_iou.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / len(runs)
    for k, (run_dir, summary, _) in enumerate(runs):
        ax.bar(np.arange(len(ERRORS)) + k * width, [summary["errors"][e] for e in ERRORS], width,
               label=_label(run_dir, summary))
    ax.set_xticks(np.arange(len(ERRORS)) + width * (len(runs) - 1) / 2, ERRORS)
    ax.set_ylabel(f"objects ({split} split)")
    ax.set_title("error categories (IoU 0.7; merges/splits at IoU > 0.1)", fontsize=9)
    ax.legend(fontsize=8)
    _savefig(fig, out / "errors.png")
    files.append(("Error categories", "errors.png"))

    if volumes:  # the example overlays are of 2-D images
        return files
    # examples: the images with the largest difference in AP@0.5 between the first two runs
    first_dir, first_summary, first_table = runs[0]
    names = first_summary["images"]
    if len(runs) > 1:
        a = first_table[first_table["thresh"] == 0.5].set_index("image")["ap"]
        b = runs[1][2][runs[1][2]["thresh"] == 0.5].set_index("image")["ap"]
        order = (b - a).abs().sort_values(ascending=False).index.tolist()
        names = [n for n in order if n in names]
    images, labels = _example_files(first_dir, split)
    from .viz import detail_window, outline_overlay, to_grey
    for name in names[:3]:
        if name not in images:
            continue
        img = read_image(images[name])
        truth = read_labels(labels[name])
        preds = []
        for run_dir, summary, table in runs:
            path = RunDir(run_dir).eval_labels(split, name)
            row = table[(table["image"] == name) & (table["thresh"] == 0.5)]
            ap = float(row["ap"].iloc[0]) if len(row) else float("nan")
            preds.append((read_labels(path) if path.is_file() else np.zeros_like(truth),
                          f"{_label(run_dir, summary)}: AP@0.5 {ap:.2f}"))
        # a large image shrunk to a thumbnail hides 1-px outlines: add a crop at native resolution
        window = detail_window(truth, [p for p, _ in preds], EXAMPLE_CROP) if max(truth.shape) > EXAMPLE_CROP else None
        rows = 1 if window is None else 2
        fig, axes = plt.subplots(rows, len(runs) + 1, figsize=(4 * (len(runs) + 1), 4 * rows), squeeze=False)
        for r in range(rows):
            sl = (slice(None), slice(None)) if r == 0 else window
            axes[r, 0].imshow(to_grey(img[sl]), cmap="gray")
            axes[r, 0].contour(truth[sl] > 0, [0.5], colors="lime", linewidths=0.6)
            for ax, (pred, title) in zip(axes[r, 1:], preds):
                ax.imshow(outline_overlay(img[sl], truth[sl], pred[sl]))
                ax.set_title(title if r == 0 else f"{EXAMPLE_CROP} px at native resolution", fontsize=9)
        axes[0, 0].set_title(f"{name}: truth ({truth.max()})", fontsize=8)
        if window is not None:
            from matplotlib.patches import Rectangle
            (y, x) = (window[0].start, window[1].start)
            for ax in axes[0]:
                ax.add_patch(Rectangle((x, y), window[1].stop - x, window[0].stop - y, fill=False, ec="yellow", lw=1))
        for ax in axes.ravel():
            ax.axis("off")
        fig.suptitle("green: true outlines, magenta: predicted" + ("; yellow: the crop below" if rows == 2 else ""),
                     fontsize=9)
        stem = figure_stem(name)
        _savefig(fig, out / f"overlay_{stem}.png")
        files.append((f"Example {name}", f"overlay_{stem}.png"))
    # flow colour wheels of an image whose raw outputs every flow run kept (evaluate keeps a few)
    flow_runs = {d: get_task(s["task"]) for d, s, _ in runs if get_task(s["task"]).has_flow_field}
    kept = [n for n in names if n in labels and
            all(RunDir(d).eval_raw(split, n).is_file() for d in flow_runs)] if flow_runs else []
    if kept:
        name = kept[0]
        fig, axes = plt.subplots(1, len(flow_runs) + 1, figsize=(4 * (len(flow_runs) + 1), 4))
        axes[0].imshow(flows_to_rgb(masks_to_flows(read_labels(labels[name]))))
        axes[0].set_title("flows of the true labels", fontsize=9)
        for ax, d in zip(axes[1:], flow_runs):
            raw = np.load(RunDir(d).eval_raw(split, name))["raw"]
            dP, mask = flow_runs[d].flow_field(raw)
            ax.imshow(flows_to_rgb(dP, mask=mask))
            ax.set_title(f"predicted flows: {d.name}", fontsize=9)
        for ax in axes:
            ax.axis("off")
        stem = figure_stem(name)
        _savefig(fig, out / f"flows_{stem}.png")
        files.append((f"Flow colour wheel {name}", f"flows_{stem}.png"))
    return files


def _example_files(run_dir: Path, split: str):
    from .manifest import read_manifest
    rd = RunDir(run_dir)
    meta = rd.read_json(rd.META)
    try:
        m = read_manifest(meta["manifest"], meta.get("data_root"), check_files=False).split(split)
    except (OSError, ValueError):
        return {}, {}
    names = [Path(p).stem for p in m.table["image"]]
    return ({n: m.image_path(i) for i, n in enumerate(names)}, {n: m.label_path(i) for i, n in enumerate(names)})


def _by_task(runs) -> dict:
    """The runs grouped by task, in the order given."""
    groups = {}
    for r in runs:
        groups.setdefault(r[1]["task"], []).append(r)
    return groups


def _spread_rows(runs):
    """One row per task evaluated in two or more runs: mean ± sd [min, max] of each score."""
    rows = []
    for task, group in _by_task(runs).items():
        if len(group) < 2:
            continue
        group = [s for _, s, _ in group]
        values = [[g[k] for g in group] for _, k in COLUMNS] + [[g["errors"][e] for g in group] for e in ("merges", "splits")]
        fmt = [".3f"] * len(COLUMNS) + [".0f", ".0f"]
        rows.append([task, len(group)] + [f"{np.mean(v):{f}} ± {np.std(v, ddof=1):{f}} [{min(v):{f}}, {max(v):{f}}]"
                                          for v, f in zip(values, fmt)])
    return rows


def _paired_differences(runs):
    """Per-image AP@0.5 differences with a Wilcoxon signed-rank test.

    With several tasks evaluated in the same number of runs each (e.g. boundary and flow, one run
    per seed, listed in the same seed order), the k-th run of every later task is paired with the
    k-th of the first task, and with several seeds the per-image means over seeds are compared as
    well (one value per image, so the test does not count an image twice).  Otherwise each run is
    compared with the first.
    """
    from scipy.stats import wilcoxon

    def ap50(table):
        return table[table["thresh"] == 0.5].set_index("image")["ap"]

    def row(name, a, b):
        common = a.index.intersection(b.index)
        d = (b[common] - a[common]).to_numpy()
        p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
        return [name, len(d), _fmt(float(d.mean())), _fmt(float(np.median(d))), int((d > 0).sum()),
                int((d < 0).sum()), int((d == 0).sum()), f"{p:.2g}"]

    def mean(group):
        return sum(ap50(t) for _, _, t in group) / len(group)

    groups = list(_by_task(runs).values())
    if len(groups) >= 2 and len(set(map(len, groups))) == 1:
        first, rows = groups[0], []
        for other in groups[1:]:
            rows += [row(f"{_label(rb, sb)} - {_label(ra, sa)}", ap50(ta), ap50(tb))
                     for (ra, sa, ta), (rb, sb, tb) in zip(first, other)]
            if len(first) > 1:
                rows.append(row(f"mean of {len(other)} {other[0][1]['task']} runs - mean of {len(first)} "
                                f"{first[0][1]['task']} runs", mean(first), mean(other)))
        return rows
    ref_dir, ref_s, ref_t = runs[0]
    return [row(f"{_label(r, s)} - {_label(ref_dir, ref_s)}", ap50(ref_t), ap50(t)) for r, s, t in runs[1:]]


def compare_runs(run_dirs, out_dir, split: str = "test", volumes: str = "") -> Path:
    """Write the comparison report of evaluated runs into `out_dir`; return the Markdown file's path.

    `volumes` (``"3d"`` or ``"stitch"``) compares the runs' 3-D scores on volumes
    (``eval_<split>_<volumes>/``, :func:`unetflow.evaluate.evaluate_volumes`) instead of their 2-D ones.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = [(r, *_load_eval(r, split, volumes)) for r in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    what = f", volumes scored in 3-D ({volumes})" if volumes else ""
    md = [f"# unetflow comparison ({split} split{what})", ""]
    header = ["run", "images", "objects"] + [c for c, _ in COLUMNS] + ["precision@0.5", "recall@0.5"] + list(ERRORS)
    rows = []
    for run_dir, s, _ in runs:
        rows.append([_label(run_dir, s), s["n_images"], s["n_true"]] + [_fmt(s[k]) for _, k in COLUMNS]
                    + [_fmt(s["by_iou"]["0.50"]["precision"]), _fmt(s["by_iou"]["0.50"]["recall"])]
                    + [s["errors"][e] for e in ERRORS])
    md += ["## Scores", "", _md_table(header, rows), ""]
    mods = sorted({m for _, s, _ in runs for m in s.get("by_modality", {})})
    if mods:
        md += ["## By modality", ""]
        mrows = []
        for mod in mods:
            for run_dir, s, _ in runs:
                b = s["by_modality"].get(mod)
                if b:
                    mrows.append([mod, _label(run_dir, s), b["n_images"], b["n_true"]]
                                 + [_fmt(b[k]) for _, k in COLUMNS] + [b["errors"][e] for e in ERRORS])
        md += [_md_table(["modality", "run", "images", "objects"] + [c for c, _ in COLUMNS] + list(ERRORS), mrows), ""]
    spread = _spread_rows(runs)
    if spread:
        md += ["## Spread over runs of the same task (e.g. seeds): mean ± sd [min, max]", "",
               _md_table(["task", "runs"] + [c for c, _ in COLUMNS] + ["merges", "splits"], spread), ""]
    pairs = _paired_differences(runs)
    if pairs:
        md += ["## Paired per-image differences (AP@0.5)", "",
               _md_table(["difference", "images", "mean", "median", "better", "worse", "equal", "Wilcoxon p"], pairs), ""]
    md += ["## Post-processing used", ""]
    for run_dir, s, _ in runs:
        md.append(f"- {_label(run_dir, s)}: " + ", ".join(f"{k}={v}" for k, v in s["postprocess"].items()))
    md += ["", "## Timing (this machine)", ""]
    if volumes:
        md += [_md_table(["run", "s per megavoxel (all of it)"], [[_label(r, s), _fmt(s["timing"]["s_per_mvox"])]
                                                                  for r, s, _ in runs]), ""]
    else:
        md += [_md_table(["run", "network s/Mpx", "post-processing s/Mpx"],
                         [[_label(r, s), _fmt(s["timing"]["network_s_per_mpx"]),
                           _fmt(s["timing"]["postprocess_s_per_mpx"])] for r, s, _ in runs]), ""]
    plots = _plots(runs, out, split, volumes)
    md += ["## Plots", ""] + [f"### {title}\n\n![{title}]({f})\n" for title, f in plots]
    text = "\n".join(md) + "\n"
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(_to_html(text)))
    return out / "report.md"


def _to_html(markdown: str) -> str:
    """A small Markdown-to-HTML rendering of the report (headings, tables, images, lists)."""
    body, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>unetflow comparison</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
