import subprocess
import sys


def test_array_modules_do_not_import_tensorflow():
    code = ("import sys, unetflow, unetflow.flows, unetflow.io, unetflow.manifest, unetflow.boundary, "
            "unetflow.precompute, unetflow.cli, unetflow.postprocess, unetflow.metrics; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
