"""The user's workflow after training: evaluate, compare, quickstart, notebooks, predict CLI."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

pytest.importorskip("tensorflow")

from unetflow.cli import main
from unetflow.io import read_labels
from unetflow.metrics import matching_dataset

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A tiny quickstart: two trained, evaluated runs and their report."""
    from unetflow.quickstart import quickstart
    out = tmp_path_factory.mktemp("qs")
    report = quickstart(out=out, budget="tiny", progress=False)
    return out, report


def test_quickstart_end_to_end(quick):
    out, report = quick
    text = report.read_text()
    assert "| boundary (boundary) |" in text and "| flow (flow) |" in text
    for f in ("report.html", "ap_vs_iou.png", "errors.png"):
        assert (out / "report" / f).is_file()
    assert "<table>" in (out / "report" / "report.html").read_text()
    assert list((out / "report").glob("flows_*.png")) and "Flow colour wheel" in text
    n_test = int(pd.read_csv(json.loads((out / "flow" / "meta.json").read_text())["manifest"])["split"].eq("test").sum())
    assert len(list((out / "report").glob("overlay_*.png"))) == min(3, n_test)  # one file per example
    assert "| flow (flow) - boundary (boundary) |" in text  # paired per-image differences


def test_evaluation_numbers_match_saved_predictions(quick):
    out, _ = quick
    import pandas as pd
    for task in ("boundary", "flow"):
        run = out / task
        s = json.loads((run / "eval_test" / "summary.json").read_text())
        meta = json.loads((run / "meta.json").read_text())
        table = pd.read_csv(Path(meta["manifest"]))
        test = table[table["split"] == "test"]
        truth = [read_labels(Path(meta["data_root"]) / p) for p in test["label"]]
        preds = [read_labels(run / "eval_test" / "labels" / f"{Path(p).stem}.tif") for p in test["image"]]
        m50, m90 = matching_dataset(truth, preds, [0.5, 0.9])
        assert s["ap50"] == pytest.approx(m50.ap) and s["ap90"] == pytest.approx(m90.ap)
        assert s["n_true"] == sum(int(t.max()) for t in truth)
        assert (run / "thresholds.json").is_file()  # tuned on val
        per_image = pd.read_csv(run / "eval_test" / "per_image.csv")
        assert set(per_image["image"]) == {Path(p).stem for p in test["image"]} and "modality" in per_image


def test_quickstart_on_given_data(dsb_root, tmp_path, capsys):
    """`unetflow quickstart --data DIR` on a small DSB-layout folder: all three modalities, every split."""
    import pandas as pd
    table = pd.read_csv(dsb_root / "manifest.csv")
    table = table.assign(area=table["height"] * table["width"]).sort_values(["area", "image"])
    picks = [table[table["modality"] == m].iloc[:2] for m in sorted(table["modality"].unique())]
    rows = pd.concat(picks).reset_index(drop=True)
    rows["split"] = ["train", "val", "train", "test", "train", "test"][: len(rows)]
    data = tmp_path / "data"
    for col in ("image", "label"):
        for rel in rows[col]:
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).symlink_to(dsb_root / rel)
    rows.to_csv(data / "manifest.csv", index=False)
    out = tmp_path / "qs"
    assert main(["quickstart", "--data", str(data), "--out", str(out), "--budget", "tiny"]) == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary.strip() in printed
    for task in ("boundary", "flow"):
        assert json.loads((out / task / "meta.json").read_text())["data_root"] == str(data.resolve())
        for split in ("val", "test"):
            s = json.loads((out / task / f"eval_{split}" / "summary.json").read_text())
            assert s["n_images"] == (rows["split"] == split).sum()
            assert f"| {task} | {split} | {s['n_images']} | {s['n_true']} | {s['ap50']:.3f} |" in summary
    assert (out / "report" / "report.md").is_file()


def test_evaluate_with_manifest_diameters(quick, tmp_path):
    """diameter 'manifest' zooms each image by train median / manifest diameter, into its own folder."""
    import pandas as pd
    from unetflow.evaluate import evaluate_run
    from unetflow.predict import load_run
    out, _ = quick
    before = (out / "flow" / "eval_test" / "summary.json").read_text()
    s = evaluate_run(out / "flow", "test", diameter="manifest", progress=False)
    assert s["diameter"] == "manifest" and Path(s["out"]) == out / "flow" / "eval_test_manifest"
    assert (out / "flow" / "eval_test_manifest" / "per_image.csv").is_file()
    assert (out / "flow" / "eval_test" / "summary.json").read_text() == before  # the plain evaluation is kept
    s = evaluate_run(out / "flow", "test", diameter="manifest", tta=True, progress=False)
    assert Path(s["out"]) == out / "flow" / "eval_test_tta_manifest" and s["tta"]
    # every test image at twice the training median diameter: the network sees them at half size
    run = load_run(out / "flow")
    manifest = pd.read_csv(run.meta["manifest"])
    manifest["median_object_diameter_px"] = 2 * run.meta["train_median_diameter"]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    s = evaluate_run(out / "flow", "test", manifest=tmp_path / "manifest.csv", data_root=run.meta["data_root"],
                     diameter="manifest", progress=False)
    assert s["timing"]["megapixels"] > 0 and s["n_images"] == (manifest["split"] == "test").sum()
    manifest.drop(columns="median_object_diameter_px").to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="median_object_diameter_px"):
        evaluate_run(out / "flow", "test", manifest=tmp_path / "manifest.csv", data_root=run.meta["data_root"],
                     diameter="manifest", progress=False)


def test_evaluate_with_auto_diameter(quick):
    """--diameter auto on a run trained at native scale: its own folder, with the estimates' error."""
    from unetflow.cli import main
    out, _ = quick
    assert main(["evaluate", str(out / "flow"), "--split", "test", "--diameter", "auto"]) == 0
    s = json.loads((out / "flow" / "eval_test_auto" / "summary.json").read_text())
    assert s["diameter"] == "auto" and s["timing"]["size_estimation_s"] > 0
    table = pd.read_csv(out / "flow" / "eval_test_auto" / "per_image.csv").drop_duplicates("image")
    # the reported error is the estimates' against the annotations' diameters (a 3-step model's
    # estimates are poor, so the test checks the bookkeeping, not the accuracy)
    est = table["diameter_used"].to_numpy(float)
    error = np.nanmedian(np.abs(est / table["median_object_diameter_px"].to_numpy(float) - 1))
    assert s["diameter_estimate"]["median_relative_error"] == pytest.approx(error)
    assert s["diameter_estimate"]["failed"] == int(np.isnan(est).sum())
    from unetflow.evaluate import evaluate_run
    with pytest.raises(ValueError, match="give diameter 'auto', 'native' or 'manifest', got 12"):
        evaluate_run(out / "flow", "test", diameter=12, progress=False)


def test_evaluate_relative_run_dir_and_tags_keep_precisions_apart(quick, monkeypatch):
    """A run directory given relative to the working directory, a tag with and without a precision:
    each summary lands in its own folder of the run."""
    from unetflow.cli import main
    out, _ = quick
    monkeypatch.chdir(out)
    for precision in ("float32", "bfloat16"):
        assert main(["evaluate", "flow", "--split", "test", "--no-tune", "--tag", "x", "--precision", precision]) == 0
    f32 = json.loads((out / "flow" / "eval_test_x" / "summary.json").read_text())
    bf16 = json.loads((out / "flow" / "eval_test_bfloat16_x" / "summary.json").read_text())
    assert (f32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    assert not (out / "flow" / "flow").exists()


def test_summary_errors_from_table_match_direct_count():
    from unetflow.evaluate import summarize
    from unetflow.metrics import per_image_table
    from conftest import random_labels
    rng = np.random.default_rng(3)
    truth = [random_labels(rng) for _ in range(4)]
    preds = [random_labels(rng) for _ in range(3)] + [truth[3]]
    table = per_image_table(truth, preds, [f"im{i}" for i in range(4)])
    assert summarize(truth, preds, table)["errors"] == summarize(truth, preds, None)["errors"]


def test_report_spread_over_seeds():
    from unetflow.report import _spread_rows

    def summary(task, ap50, merges):
        return {"task": task, "ap50": ap50, "ap75": 0.5, "ap90": 0.1, "mean_f1": 0.4,
                "errors": {"merges": merges, "splits": 3}}
    runs = [(None, summary("flow", 0.6, 10), None), (None, summary("boundary", 0.5, 7), None),
            (None, summary("flow", 0.8, 20), None)]
    (row,) = _spread_rows(runs)  # one boundary run: no spread
    assert row[:3] == ["flow", 2, "0.700 ± 0.141 [0.600, 0.800]"]
    assert row[-2:] == ["15 ± 7 [10, 20]", "3 ± 0 [3, 3]"]


def test_report_pairs_runs_by_seed():
    import pandas as pd
    from unetflow.report import _paired_differences

    def run(name, task, aps):
        table = pd.DataFrame({"image": ["a", "b", "c"], "thresh": 0.5, "ap": aps})
        return (Path(name), {"task": task}, table)
    runs = [run("b0", "boundary", [0.5, 0.5, 0.5]), run("b1", "boundary", [0.7, 0.5, 0.5]),
            run("f0", "flow", [0.6, 0.4, 0.5]), run("f1", "flow", [0.8, 0.8, 0.5])]
    rows = _paired_differences(runs)
    assert [r[0] for r in rows] == ["f0 (flow) - b0 (boundary)", "f1 (flow) - b1 (boundary)",
                                    "mean of 2 flow runs - mean of 2 boundary runs"]
    assert rows[0][2:7] == ["0.000", "0.000", 1, 1, 1]  # mean, median, better, worse, equal
    assert rows[2][1] == 3 and rows[2][2] == f"{(0.1 + 0.1 + 0) / 3:.3f}"  # per-image means: a 0.6 vs 0.7, b 0.5 vs 0.6, c equal
    # unequal groups: each run against the first
    assert [r[0] for r in _paired_differences(runs[:3])] == ["b1 (boundary) - b0 (boundary)", "f0 (flow) - b0 (boundary)"]
    # a third task: paired with the first task as well
    three = runs + [run("d0", "distance", [0.5, 0.6, 0.5]), run("d1", "distance", [0.7, 0.5, 0.6])]
    assert [r[0] for r in _paired_differences(three)][3:] == [
        "d0 (distance) - b0 (boundary)", "d1 (distance) - b1 (boundary)",
        "mean of 2 distance runs - mean of 2 boundary runs"]


def test_summary_of_known_predictions():
    from unetflow.evaluate import summarize
    t = np.zeros((20, 20), np.int32)
    t[0:10, 0:10] = 1
    t[0:10, 10:20] = 2
    p = t.copy()
    p[p == 2] = 1  # a merge
    s = summarize([t, t], [t, p], None)
    assert s["n_true"] == 4 and s["errors"]["merges"] == 1 and s["errors"]["missed"] == 2
    assert s["ap50"] == pytest.approx(3 / 4)  # 3 TP (the merge matches one object at IoU 0.5), 1 FN


def test_notebooks_execute(quick):
    nbformat = pytest.importorskip("nbformat")
    NotebookClient = pytest.importorskip("nbclient").NotebookClient
    out, _ = quick
    os.environ["UNETFLOW_RUNS"] = f"{out / 'boundary'}:{out / 'flow'}"
    try:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs not stripped"
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
    finally:
        del os.environ["UNETFLOW_RUNS"]


def test_predict_cli_reports_bad_image_and_goes_on(quick, tmp_path, capsys):
    out, _ = quick
    good = next((out / "synthetic").rglob("images/*.tif"))
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage")
    stains = tmp_path / "stains.tif"  # two stains for a grey model: refused, not averaged
    tifffile.imwrite(stains, np.zeros((32, 32, 2), np.uint8))
    code = main(["predict", str(out / "flow"), str(bad), str(stains), str(good), "--out", str(tmp_path / "pred"),
                 "--save-raw"])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "corrupt.tif" in err
    assert re.search(r"FAILED .*stains.tif: .*has 2 channel\(s\) but the model takes 1 grey channel", err)
    assert not (tmp_path / "pred" / "stains_labels.tif").exists()
    assert (tmp_path / "pred" / f"{good.stem}_labels.tif").is_file()  # the good image after two bad ones
    assert (tmp_path / "pred" / f"{good.stem}_flows.tif").is_file()


def test_run_dir_errors(tmp_path, quick, capsys):
    from unetflow.predict import load_run
    with pytest.raises(FileNotFoundError, match="not found"):
        load_run(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: x\n")
    with pytest.raises(FileNotFoundError, match="missing meta.json"):
        load_run(tmp_path / "half")
    out, _ = quick
    meta = json.loads((out / "flow" / "meta.json").read_text())
    import shutil
    other = tmp_path / "other"
    shutil.copytree(out / "flow", other)
    (other / "meta.json").write_text(json.dumps({**meta, "unetflow_version": "0.0.1"}))
    with pytest.warns(UserWarning, match="made by unetflow 0.0.1"):
        load_run(other)
    assert main(["predict", str(out / "flow"), "--out", str(tmp_path / "x")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "half")]) == 2


def test_data_fetch_from_local_archive(tmp_path):
    import zipfile
    import imageio.v3 as iio
    src = tmp_path / "src" / "stage1_train"
    for k in range(3):
        sample = src / f"id{k}"
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        img = np.zeros((20, 24, 4), np.uint8)
        img[..., :3] = 40 * k
        img[..., 3] = 255
        iio.imwrite(sample / "images" / f"id{k}.png", img)
        for j in range(2):
            m = np.zeros((20, 24), np.uint8)
            m[2 + 8 * j:8 + 8 * j, 3:10] = 255
            iio.imwrite(sample / "masks" / f"m{j}.png", m)
    archive = tmp_path / "dsb.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in src.rglob("*.png"):
            z.write(f, f.relative_to(tmp_path / "src"))
    import hashlib
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert main(["data", "fetch", "dsb2018", "--to", str(tmp_path / "bad"), "--from", str(archive),
                 "--sha256", "0" * 64]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["data", "fetch", "dsb2018", "--to", str(tmp_path / "dsb"), "--from", str(archive),
                 "--sha256", digest]) == 0
    from unetflow.manifest import read_manifest
    m = read_manifest(tmp_path / "dsb" / "manifest.csv", check_shapes=True)
    assert len(m) == 3
    lab = read_labels(m.label_path(0))
    assert lab.max() == 2 and tifffile.imread(m.label_path(0)).dtype == np.uint16


def test_cli_bugs_keep_their_traceback(monkeypatch, capsys):
    """The user's errors are one line; a bug (here a TypeError inside a command) is not hidden,
    and under -v every error keeps its traceback."""
    import unetflow.cli as cli

    def broken(args):
        raise TypeError("a bug")

    def bad_input(args):
        raise ValueError("--thing: must be positive")
    monkeypatch.setattr(cli, "_data_group", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["data", "group", "m.csv"])
    monkeypatch.setattr(cli, "_data_group", bad_input)
    assert cli.main(["data", "group", "m.csv"]) == 2
    assert "unetflow data: error: --thing: must be positive" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be positive"):
        cli.main(["-v", "data", "group", "m.csv"])


def test_cli_messages_name_the_argument(quick, tmp_path, capsys):
    """Each misuse gets exit code 2 and a message about the argument, not a library's words."""
    out, _ = quick
    image = next((out / "synthetic").rglob("images/*.tif"))
    cases = [
        (["predict", str(out / "flow"), str(image), "--out", str(tmp_path / "p"), "--tile-size", "7"],
         r"`tile_size` must be an integer of at least \d+ px"),
        (["predict", "--out", str(tmp_path / "p")], "give a run directory or --model NAME"),
        (["predict", str(out / "flow"), str(image), "--out", str(tmp_path / "p"), "--postprocess", "cellprob"],
         "--postprocess 'cellprob' must look like key=value"),
        (["predict", str(out / "flow"), str(image), "--out", str(tmp_path / "p"), "--postprocess", "nope=1"],
         r"unknown post-processing option\(s\) \['nope'\]"),
        (["predict", str(out / "flow"), str(image), str(image), "--out", str(tmp_path / "x.zarr")],
         "give exactly one INPUT"),
        (["train", str(REPO / "experiments" / "tiny_flow.yaml"), "--resume", str(out / "flow")],
         "either an experiment config or --resume"),
        (["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")], "nothing"),
        (["data", "group", str(tmp_path / "missing.csv")], "missing.csv: manifest not found"),
        (["train", str(REPO / "experiments" / "tiny_flow.yaml"), "--set", "model.depth=-1", "--set", "train.epochs=0"],
         r"2 problems:\n  - in `model`: model.depth must be a positive integer, got -1\n"
         r"  - in `train`: train.epochs must be at least 1"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err), (args, err)
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())
