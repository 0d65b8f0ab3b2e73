import subprocess
import sys

NO_TF = "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'"


def _run(code):
    subprocess.run([sys.executable, "-c", code], check=True)


def test_array_modules_do_not_import_tensorflow():
    _run("import sys, unetflow, unetflow.flows, unetflow.io, unetflow.manifest, unetflow.boundary, "
         "unetflow.precompute, unetflow.cli, unetflow.postprocess, unetflow.dynamics, unetflow.metrics, "
         "unetflow.splits, unetflow.hardware, unetflow.tasks, unetflow.rundir, unetflow.config, unetflow.pipeline, "
         "unetflow.predict, unetflow.big, unetflow.geometry; "
         "unetflow.tasks.get_task('distance').make_targets(__import__('numpy').ones((4, 4), int), None); "
         "unetflow.labels_to_distance, unetflow.RunDir, unetflow.TASKS; " + NO_TF)


def test_top_level_names_are_lazy():
    # touching the array functions imports their modules only
    _run("import sys, unetflow; "
         "f = (unetflow.masks_to_flows, unetflow.compute_masks, unetflow.matching, unetflow.average_precision); "
         "assert all(callable(x) for x in f); " + NO_TF)
    # the Keras names resolve when used, and the listing shows every name
    _run("import sys, unetflow; "
         "assert {'predict_instances', 'build_flow_unet', 'FlowLoss', 'masks_to_flows'} <= set(dir(unetflow)); "
         "assert callable(unetflow.predict_instances) and callable(unetflow.build_boundary_unet); "
         "assert 'tensorflow' in sys.modules")


def test_documented_import_paths_work():
    _run("from unetflow.flows import masks_to_flows, flows_to_rgb\n"
         "from unetflow.postprocess import follow_flows, get_masks, compute_masks, boundary_to_labels\n"
         "from unetflow.metrics import matching, average_precision\n"
         "from unetflow.models import build_boundary_unet, build_flow_unet\n"
         "from unetflow.losses import WeightedCategoricalCrossentropy, FlowLoss\n"
         "from unetflow.predict import predict_instances\n")
