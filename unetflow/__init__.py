"""unetflow: Keras U-Nets for cell and nucleus instance segmentation with boundary, flow or distance labels.

The core names are attached lazily (as scikit-image does with ``lazy_loader``): ``import unetflow``
is cheap, and touching an array function (``unetflow.masks_to_flows``, ``unetflow.compute_masks``,
``unetflow.matching``, ...) imports only its module, never TensorFlow.  The Keras names
(``build_flow_unet``, ``FlowLoss``, ``predict_instances``, ...) import TensorFlow when first used.

>>> import numpy as np, unetflow
>>> labels = np.zeros((10, 10), np.int32); labels[2:8, 2:8] = 1
>>> unetflow.masks_to_flows(labels).shape
(2, 10, 10)
"""
import lazy_loader as _lazy

__version__ = "0.1.0"

#: Public names and the module each lives in.
_SUBMOD_ATTRS = {
    "flows": ["masks_to_flows", "flows_to_rgb", "diameters"],
    "dynamics": ["follow_flows", "get_masks", "compute_masks", "PostprocessConfig"],
    "boundary": ["labels_to_boundary_classes", "boundary_to_labels", "BoundaryPostprocessConfig"],
    "metrics": ["matching", "matching_dataset", "average_precision"],
    "io": ["read_image", "read_labels", "write_labels"],
    "manifest": ["read_manifest"],
    "tasks": ["TASKS", "get_task", "Task"],
    "distance": ["labels_to_distance", "distance_to_labels", "DistancePostprocessConfig"],
    "rundir": ["RunDir"],
    "models": ["build_unet", "build_boundary_unet", "build_flow_unet", "load_model"],
    "losses": ["FlowLoss", "DistanceLoss", "WeightedCategoricalCrossentropy"],
    "predict": ["predict_instances", "load_run"],
    "train": ["run_experiment"],
    "evaluate": ["evaluate_run"],
}

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submodules=[], submod_attrs=_SUBMOD_ATTRS)
__all__ = [*__all__, "__version__"]
