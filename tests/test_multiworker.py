"""Multi-worker training: two local worker processes with TF_CONFIG, as on a cluster."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("tensorflow")

TINY = ["model.task=flow", "model.depth=2", "model.base_filters=4", "augment.crop_size=48", "train.batch_size=4",
        "train.steps_per_epoch=3", "train.val_crops=8", "data.synthetic_images=12", "train.strategy=multi_worker"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(tmp_path, args, own_args=((), ())):
    """Run `unetflow train ARGS OWN_ARGS[i]` as worker i (0 and 1) of one cluster; return their exit
    codes and logs."""
    ports = _free_ports(2)
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
        tmp = tmp_path / f"tmp{i}"  # each worker's temporary files, to see that they are removed
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(tmp)}
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "unetflow.cli", "train", *args, *own_args[i]], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for p, log in procs:
        codes.append(p.wait(timeout=600))
        log.close()
    return codes, [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]


@pytest.mark.slow
def test_two_workers_train_resume_and_only_the_chief_writes(tmp_path):
    from unetflow.config import load_config
    from unetflow.models import load_model
    from unetflow.pipeline import load_training_data, make_dataset
    from unetflow.precompute import TargetCache
    from unetflow.predict import load_run, predict_instances
    from unetflow.rundir import RunDir
    from unetflow.synthetic import synthetic_nuclei
    from unetflow.train import resolve_data

    run = tmp_path / "run"
    sets = [f"--set={s}" for s in TINY + ["train.epochs=2", f"data.cache={tmp_path / 'cache'}",
                                          f"data.root={tmp_path / 'synth'}"]]
    tiny_flow = str(Path(__file__).resolve().parent.parent / "experiments" / "tiny_flow.yaml")
    # each worker is told its own run directory, so a write by the non-chief would be seen
    codes, logs = _launch(tmp_path, [tiny_flow, *sets], (["--run-dir", str(run)], ["--run-dir", str(run) + "_w1"]))
    assert codes == [0, 0], logs
    rd = RunDir(run)
    state = rd.read_json(rd.STATE)
    assert state["status"] == "finished" and state["epochs_done"] == 2
    # only the chief (worker 0: the cluster has no "chief" task) wrote: its run directory is
    # complete, and the other worker wrote nothing to its own and left no temporary files behind
    assert rd.model_file("best").is_file() and rd.model_file("last").is_file()
    assert not Path(str(run) + "_w1").exists()
    assert not any((tmp_path / "tmp1").iterdir()) and not any((tmp_path / "tmp0").iterdir())

    # the validation loss the chief logged is the loss of the whole validation set (both workers' shares)
    cfg = load_config(run / "config.yaml")
    data = resolve_data(cfg)
    val = load_training_data(*data.splits["val"][:2], TargetCache(cfg.data.cache), cfg.input, progress=False)
    ds = make_dataset(val, "flow", cfg.augment, batch_size=cfg.train.batch_size, seed=cfg.train.seed + 1,
                      augment=False, n_samples=cfg.train.val_crops)
    result = load_model(rd.model_file("last")).evaluate(ds, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(state["history"][-1]["val_loss"], rel=1e-3)

    # the result loads and predicts
    image = synthetic_nuclei(np.random.default_rng(0), (64, 64))[0]
    labels, _ = predict_instances(load_run(run), image)
    assert labels.shape == (64, 64)

    # resume after an interruption continues from the last completed epoch, as on one machine
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rd.write_json(rd.STATE, {**state, "status": "interrupted"})
    codes, logs = _launch(tmp_path, ["--resume", str(run)])
    assert codes == [0, 0], logs
    state = rd.read_json(rd.STATE)
    assert state["epochs_done"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]


@pytest.mark.parametrize("task_type, task_id, cluster, chief", [
    (None, None, {}, True),                                        # one process, no cluster
    ("chief", 0, {"chief": ["a"], "worker": ["b"]}, True),
    ("worker", 0, {"chief": ["a"], "worker": ["b"]}, False),       # a chief exists: worker 0 is not it
    ("worker", 0, {"worker": ["a", "b"]}, True),                   # no chief task: worker 0 writes
    ("worker", 1, {"worker": ["a", "b"]}, False),
])
def test_which_worker_is_chief(task_type, task_id, cluster, chief):
    """TensorFlow's convention: the "chief" task writes, or worker 0 where the cluster has no chief."""
    from types import SimpleNamespace

    from unetflow.train import _is_chief

    resolver = SimpleNamespace(task_type=task_type, task_id=task_id,
                               cluster_spec=lambda: SimpleNamespace(as_dict=lambda: cluster))
    assert _is_chief(SimpleNamespace(cluster_resolver=resolver)) is chief
    assert _is_chief(SimpleNamespace()) is True  # a strategy without a cluster resolver
