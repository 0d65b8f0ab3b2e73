from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetflow.manifest import ManifestError, read_manifest


def make_data(root, n=3, shape=(16, 16)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["image,label,split,channels,modality"]
    for i in range(n):
        tifffile.imwrite(root / "images" / f"{i}.tif", np.zeros(shape, np.uint8))
        tifffile.imwrite(root / "labels" / f"{i}.tif", np.zeros(shape, np.uint16))
        rows.append(f"images/{i}.tif,labels/{i}.tif,{['train', 'val', 'test'][i % 3]},1,fluo")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_read_valid_manifest_and_splits(tmp_path):
    m = read_manifest(make_data(tmp_path), check_shapes=True)
    assert len(m) == 3 and m.root == tmp_path.resolve()
    assert len(m.split("train")) == 1
    assert m.image_path(0) == tmp_path.resolve() / "images/0.tif"
    assert "modality" in m.table.columns and len(m.sha256) == 64


def test_all_problems_reported_at_once(tmp_path):
    path = make_data(tmp_path)
    text = path.read_text().splitlines()
    text.append("images/0.tif,labels/9.tif,training,1,x")   # duplicate image, missing label, bad split
    text.append("images/8.tif,,val,1,x")                    # missing image file, empty label
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    for expected in ["unknown split 'training'", "duplicate `image`", "label file not found", "empty `label`",
                     "image file not found"]:
        assert expected in msg, expected
    assert len(info.value.problems) >= 5 and "m.csv" in msg


def test_shape_mismatch_and_channels(tmp_path):
    path = make_data(tmp_path)
    tifffile.imwrite(tmp_path / "labels" / "1.tif", np.zeros((16, 17), np.uint16))
    tifffile.imwrite(tmp_path / "images" / "2.tif", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ManifestError) as info:
        read_manifest(path, check_shapes=True)
    assert "shape" in str(info.value) and "3 channel(s), manifest says 1" in str(info.value)


def test_data_root_precedence(tmp_path, monkeypatch):
    path = make_data(tmp_path / "data")
    moved = tmp_path / "elsewhere.csv"
    moved.write_text(path.read_text())
    with pytest.raises(ManifestError, match="UNETFLOW_DATA"):
        read_manifest(moved)
    monkeypatch.setenv("UNETFLOW_DATA", str(tmp_path / "data"))
    assert len(read_manifest(moved)) == 3
    monkeypatch.setenv("UNETFLOW_DATA", str(tmp_path / "nowhere"))
    assert len(read_manifest(moved, data_root=tmp_path / "data")) == 3


def test_missing_columns_and_missing_file(tmp_path):
    (tmp_path / "bad.csv").write_text("img,lbl\na,b\n")
    with pytest.raises(ManifestError, match="missing required column"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_manifest(tmp_path / "nothere.csv")


def test_repo_manifest_lists_dsb(dsb_root):
    from conftest import REPO
    m = read_manifest(REPO / "data_manifest.csv", data_root=dsb_root)
    assert len(m) == 664
    assert set(m.table["split"]) == {"train", "val", "test"}


def test_a_config_manifest_is_found_in_the_data_folder(tmp_path, monkeypatch):
    from unetflow.manifest import find_manifest

    data = tmp_path / "lab"
    data.mkdir()
    (data / "manifest.csv").write_text("image,label,split\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNETFLOW_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"manifest.csv: manifest not found.*set \$UNETFLOW_DATA"):
        find_manifest("manifest.csv")
    assert find_manifest("manifest.csv", data) == data / "manifest.csv"
    monkeypatch.setenv("UNETFLOW_DATA", str(data))
    assert find_manifest("manifest.csv") == data / "manifest.csv"
    (tmp_path / "other.csv").write_text("image,label,split\n")  # not in the data folder: the current directory
    assert find_manifest("other.csv") == Path("other.csv")
    with pytest.raises(FileNotFoundError, match=f"looked for {data / 'nope.csv'} or nope.csv"):
        find_manifest("nope.csv")


def _pair(folder, name, shape=(20, 24), channels=2, n=3, label_name=None):
    image = np.zeros(shape + (channels,), np.uint8) if channels > 1 else np.zeros(shape, np.uint8)
    labels = np.zeros(shape, np.uint16)
    for i in range(n):
        labels[2 + 5 * i:5 + 5 * i, 2:8] = i + 1
    tifffile.imwrite(folder / "images" / f"{name}.tif", image)
    tifffile.imwrite(folder / "labels" / f"{label_name or name}.tif", labels)


def test_manifest_from_two_folders(tmp_path):
    from unetflow.folders import manifest_from_folders

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(10):
        _pair(tmp_path, f"field{i}", label_name=f"field{i}_masks" if i % 2 else None)  # suffix or not
    out = tmp_path / "out" / "manifest.csv"
    table = manifest_from_folders(tmp_path / "images", tmp_path / "labels", out, fractions=(0.6, 0.2, 0.2), seed=1)
    assert len(table) == 10 and set(table["channels"]) == {2} and set(table["n_objects"]) == {3}
    assert table["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
    m = read_manifest(out)  # paths relative to the manifest's folder: readable as it is
    assert m.label_path(1).name == "field1_masks.tif" and m.image_path(1).name == "field1.tif"
    same = manifest_from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "again.csv",
                                 fractions=(0.6, 0.2, 0.2), seed=1)
    assert list(same["split"]) == list(table["split"])  # seeded
    assert set(manifest_from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "val.csv")["split"]) == \
        {"train", "val"}  # no test share by default


def test_manifest_from_folders_reports_every_problem_at_once(tmp_path):
    from unetflow.cli import main
    from unetflow.folders import manifest_from_folders

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _pair(tmp_path, "good")
    tifffile.imwrite(tmp_path / "images" / "nolabel.tif", np.zeros((20, 24, 2), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "orphan.tif", np.zeros((20, 24), np.uint16))
    _pair(tmp_path, "small", shape=(20, 24))
    tifffile.imwrite(tmp_path / "labels" / "small.tif", np.ones((10, 10), np.uint16))  # another size
    _pair(tmp_path, "grey", channels=1)
    with pytest.raises(ManifestError) as err:
        manifest_from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "m.csv")
    text = str(err.value)
    assert "nolabel.tif: no label file" in text and "orphan.tif: no image named orphan" in text
    assert "small.tif is 20 x 24 px but its label" in text and "different channel counts [1, 2]" in text
    assert len(err.value.problems) == 4 and not (tmp_path / "m.csv").exists()
    assert main(["data", "manifest", str(tmp_path / "images"), str(tmp_path / "labels"), "--out",
                 str(tmp_path / "m.csv")]) == 2
    assert not (tmp_path / "m.csv").exists()


def test_data_manifest_command(tmp_path, capsys):
    from unetflow.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(5):
        _pair(tmp_path, f"f{i}", label_name=f"f{i}_labels")
    out = tmp_path / "manifest.csv"
    assert main(["data", "manifest", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(out),
                 "--split", "none"]) == 0
    assert "5 image/label pairs (2 channel(s); train 5" in capsys.readouterr().out
    assert set(read_manifest(out).table["split"]) == {"train"}
    assert main(["data", "manifest", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(out),
                 "--split", "by-group"]) == 0
    assert "group" in read_manifest(out).table.columns
    assert main(["data", "manifest", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(out),
                 "--val", "0.7", "--test", "0.5"]) == 2
    assert "leave no images to train on" in capsys.readouterr().err
