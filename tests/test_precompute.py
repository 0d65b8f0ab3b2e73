import numpy as np
import pytest
import tifffile

from unetflow.cli import main
from unetflow.flows import masks_to_flows
from unetflow.precompute import TargetCache, TargetParams, precompute
from conftest import random_labels


@pytest.fixture
def label_files(tmp_path):
    rng = np.random.default_rng(5)
    files = []
    for i in range(6):
        f = tmp_path / "labels" / f"l{i}.tif"
        f.parent.mkdir(exist_ok=True)
        tifffile.imwrite(f, random_labels(rng, shape=(32, 40), n=6).astype(np.uint16))
        files.append(f)
    return files


def test_entry_contents(tmp_path, label_files):
    cache = TargetCache(tmp_path / "cache")
    e = cache.load(label_files[0])
    labels = e["labels"]
    assert labels.max() == len(np.unique(labels)) - 1  # relabelled 1..N
    np.testing.assert_array_equal(e["flows"], masks_to_flows(labels))
    np.testing.assert_array_equal(e["cellprob"], labels > 0)
    assert set(np.unique(e["boundary"])) <= {0, 1, 2}


def test_skip_recompute_on_change_and_params(tmp_path, label_files):
    cache_dir = tmp_path / "cache"
    s = precompute(label_files, cache_dir, progress=False)
    assert (s.computed, s.skipped, len(s.failed)) == (6, 0, 0)
    s = precompute(label_files, cache_dir, progress=False)
    assert (s.computed, s.skipped) == (0, 6)
    lab = tifffile.imread(label_files[2])
    lab[0:3, 0:3] = 999
    tifffile.imwrite(label_files[2], lab)
    s = precompute(label_files, cache_dir, progress=False)
    assert (s.computed, s.skipped) == (1, 5)
    s = precompute(label_files, cache_dir, TargetParams(boundary_width=2), progress=False)
    assert (s.computed, s.skipped) == (6, 0)  # other parameters: other entries, side by side
    assert len(list(cache_dir.rglob("*.npz"))) == 13


def test_corrupted_entry_is_recomputed_never_returned(tmp_path, label_files):
    cache = TargetCache(tmp_path / "cache")
    good = cache.load(label_files[0])
    entry = cache.entry_path(cache.key(label_files[0]))
    data = bytearray(entry.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    entry.write_bytes(bytes(data))
    assert cache.status(label_files[0]) == "missing"
    again = cache.load(label_files[0])
    np.testing.assert_array_equal(again["flows"], good["flows"])
    assert cache.status(label_files[0]) == "cached"
    entry.write_bytes(b"")  # truncated to nothing
    assert cache.ensure(label_files[0]) == "computed"


def test_interrupted_run_resumes(tmp_path, label_files, monkeypatch):
    import unetflow.precompute as pc
    cache_dir = tmp_path / "cache"
    calls = {"n": 0}
    real = pc.compute_targets

    def flaky(labels, params):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(labels, params)

    monkeypatch.setattr(pc, "compute_targets", flaky)
    with pytest.raises(KeyboardInterrupt):
        precompute(label_files, cache_dir, progress=False)
    monkeypatch.setattr(pc, "compute_targets", real)
    assert not list(cache_dir.rglob("*.tmp*"))  # nothing half-written
    s = precompute(label_files, cache_dir, progress=False)
    assert (s.computed, s.skipped) == (3, 3)


def test_killed_while_writing_leaves_no_entry(tmp_path, label_files, monkeypatch):
    """A kill in the middle of writing an entry: half its bytes are on disk under a temporary
    name, which is removed; no entry appears under the real name, and the next run computes it."""
    real = np.savez_compressed

    def half_then_killed(file, **arrays):
        real(file, **arrays)
        with open(file, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        raise KeyboardInterrupt

    cache = TargetCache(tmp_path / "cache")
    monkeypatch.setattr(np, "savez_compressed", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(label_files[0])
    monkeypatch.setattr(np, "savez_compressed", real)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # neither the half file nor an entry
    assert cache.ensure(label_files[0]) == "computed" and cache.ensure(label_files[0]) == "skipped"


@pytest.mark.parametrize("version", ["format", "flow", "boundary", "distance"])
def test_a_new_algorithm_version_invalidates_the_cache(tmp_path, label_files, monkeypatch, version):
    """Each version in the key stands for code that makes the targets: a change of any one of them
    must compute the entries anew instead of reusing the old arrays."""
    import unetflow.precompute as pc
    from unetflow.tasks import TASKS

    cache = TargetCache(tmp_path / "cache")
    assert cache.ensure(label_files[0]) == "computed" and cache.ensure(label_files[0]) == "skipped"
    if version == "format":
        monkeypatch.setattr(pc, "CACHE_FORMAT_VERSION", pc.CACHE_FORMAT_VERSION + "-new")
    else:
        monkeypatch.setattr(TASKS[version], "version", str(TASKS[version].version) + "-new")
    assert cache.ensure(label_files[0]) == "computed"


def test_shards_partition_and_do_not_collide(tmp_path, label_files):
    cache_dir = tmp_path / "cache"
    counts = [precompute(label_files, cache_dir, shard=f"{i}/3", progress=False).computed for i in (1, 2, 3)]
    assert counts == [2, 2, 2]
    s = precompute(label_files, cache_dir, progress=False)
    assert (s.computed, s.skipped) == (0, 6)
    with pytest.raises(ValueError, match="shard"):
        precompute(label_files, cache_dir, shard="4/3", progress=False)


def test_failed_rows_reported_and_others_done(tmp_path, label_files):
    bad = tmp_path / "labels" / "bad.tif"
    tifffile.imwrite(bad, np.full((8, 8), 0.5, np.float32))
    s = precompute(label_files + [bad], tmp_path / "cache", workers=2, progress=False)
    assert s.computed == 6 and list(s.failed) == [str(bad)]
    assert "not integer" in s.failed[str(bad)] and "FAILED" in str(s)


def test_cli_precompute_exit_codes(tmp_path, label_files, capsys):
    rows = ["image,label,split"] + [f"labels/{f.name},labels/{f.name},train" for f in label_files]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert main(["precompute", str(tmp_path / "m.csv"), "--cache", str(tmp_path / "c")]) == 0
    assert "computed 6" in capsys.readouterr().out
    tifffile.imwrite(label_files[0], np.full((8, 8), 0.5, np.float32))
    assert main(["precompute", str(tmp_path / "m.csv"), "--cache", str(tmp_path / "c")]) == 1
    assert main(["precompute", str(tmp_path / "nope.csv"), "--cache", str(tmp_path / "c")]) == 2


def test_precompute_real_dsb(tmp_path, dsb_label_files):
    s = precompute(dsb_label_files, tmp_path / "cache", workers=2, progress=False)
    assert (s.computed, len(s.failed)) == (20, 0)
    cache = TargetCache(tmp_path / "cache")
    e = cache.load(dsb_label_files[3], compute_missing=False)
    assert e["flows"].shape == (2,) + e["labels"].shape
