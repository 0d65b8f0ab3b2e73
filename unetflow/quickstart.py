"""The quickstart: boundary vs flow U-Net (or any tasks) end to end, on the synthetic set or given data.

Precomputes the targets, trains one model per task with the same (small) budget, tunes each model's
post-processing on the val split, evaluates on the test and val splits, writes the comparison report
(on test) and ``summary.md`` (both splits; val is the split the thresholds were tuned on).
Only the task differs between the runs.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from .config import load_config
from .io import atomic_write
from .tasks import get_task

__all__ = ["quickstart", "summary_table", "BUDGETS"]

logger = logging.getLogger(__name__)

#: Training budgets: config overrides shared by both models.
BUDGETS = {
    # about a minute in all: for tests
    "tiny": ["model.depth=2", "model.base_filters=4", "augment.crop_size=48", "train.epochs=1",
             "train.steps_per_epoch=3", "train.batch_size=2", "train.val_crops=4", "data.synthetic_images=12"],
    # under 10 minutes on 2 CPU cores
    "small": ["model.depth=3", "model.base_filters=16", "augment.crop_size=96", "train.epochs=8",
              "train.steps_per_epoch=25", "train.batch_size=8", "train.val_crops=16",
              "data.synthetic_images=24"],
}


def quickstart(data=None, out="runs/quickstart", budget: str = "small", progress: bool = True,
               tasks=("boundary", "flow")) -> Path:
    """Run the boundary-vs-flow comparison (or one of any `tasks`) and return the report's path.

    Parameters
    ----------
    data : path, optional
        A folder with a ``manifest.csv`` (the DSB layout).  Default: ``$UNETFLOW_DATA`` if set,
        else the embedded synthetic nuclei set.
    out : path
        Output folder: one run directory per task (``boundary/``, ``flow/``), ``cache/``, ``report/``.
    budget : {"tiny", "small"}
    tasks : sequence of str
        Names of :data:`unetflow.tasks.TASKS`, e.g. ``("boundary", "flow", "distance")``.
    """
    from .evaluate import evaluate_run
    from .report import compare_runs
    from .train import run_experiment

    if budget not in BUDGETS:
        raise ValueError(f"`budget` must be one of {sorted(BUDGETS)}, got {budget!r}")
    tasks = [get_task(t) for t in tasks]  # unknown names fail here, before anything is trained
    out = Path(out)
    data = data or os.environ.get("UNETFLOW_DATA")
    common = [f"output_dir={out}", f"data.cache={out / 'cache'}"] + BUDGETS[budget]
    if data:
        manifest = Path(data) / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: --data must be a folder with a manifest.csv")
        common += [f"data.manifest={manifest}", f"data.root={Path(data).resolve()}", *input_overrides(manifest)]
        where = f"data in {data}"
    else:
        common += [f"data.root={out / 'synthetic'}"]
        where = "the embedded synthetic nuclei set"
    print(f"unetflow quickstart on {where}, budget {budget!r}; writing to {out.resolve()}")
    t0 = time.time()
    runs, summaries = [], {}
    for t in tasks:
        task = t.name
        cfg = load_config(None, common + [f"name={task}", f"model.task={task}", *t.recommended])
        print(f"[{time.time() - t0:5.0f} s] training the {task} U-Net")
        if (out / task).is_dir():  # an earlier quickstart's run: start afresh
            shutil.rmtree(out / task)
        run = run_experiment(cfg, run_dir=out / task, progress=progress)
        print(f"[{time.time() - t0:5.0f} s] tuning on val, evaluating on test and val: {task}")
        for split in ("test", "val"):  # test first: it tunes the thresholds on val
            summaries[task, split] = evaluate_run(run, split, progress=progress)
        runs.append(run)
    report = compare_runs(runs, out / "report", split="test")
    table = summary_table(summaries)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    print(f"[{time.time() - t0:5.0f} s] done\n\n{table}\n")
    return report


def input_overrides(manifest) -> list:
    """Config overrides for the channels of a data folder's images (its manifest's ``channels``
    column): stains of 2 channels (or more than 4) go to the network as they are, never averaged
    to grey; grey and colour images keep the grey default."""
    import pandas as pd

    from .preprocess import COLOUR_CHANNELS

    table = pd.read_csv(manifest)
    counts = set(table["channels"].dropna().astype(int)) if "channels" in table.columns else set()
    if len(counts) != 1 or (n := counts.pop()) == 1 or n in COLOUR_CHANNELS:
        return []
    return [f"input.channels={n}", "input.grey=false", "input.invert_bright_background=false"]


def summary_table(summaries: dict) -> str:
    """A Markdown table of ``{(run, split): summary}``: AP at 0.5/0.75/0.9, mean F1, merges, splits."""
    lines = ["| run | split | images | objects | AP@0.5 | AP@0.75 | AP@0.9 | mean F1 | merges | splits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (run, split), s in sorted(summaries.items(), key=lambda kv: (kv[0][1] != "val", kv[0][0])):
        lines.append(f"| {run} | {split} | {s['n_images']} | {s['n_true']} | {s['ap50']:.3f} | {s['ap75']:.3f} | "
                     f"{s['ap90']:.3f} | {s['mean_f1']:.3f} | {s['errors']['merges']} | {s['errors']['splits']} |")
    return "\n".join(lines)
