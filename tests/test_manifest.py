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
