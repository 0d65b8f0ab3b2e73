"""unetflow: Keras U-Nets for cell and nucleus instance segmentation with boundary or flow labels.

Importing the package (and its array modules: ``flows``, ``postprocess``, ``metrics``, ``io``,
``manifest``, ``boundary``) does not import TensorFlow; only ``models``, ``losses``, ``pipeline``,
``train`` and ``predict`` do.
"""
__version__ = "0.1.0"
