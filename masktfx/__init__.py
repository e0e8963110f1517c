"""MaskTFX: region-level image classification pipelines on TFX."""

import os
import warnings

# TFX 1.16, TFT and TFMA need Keras 2; TensorFlow 2.16 picks Keras 3 unless told otherwise before
# its first import. Every module of MaskTFX lives in this package (pipeline/, modules/ and the
# other folders are its subpackages), so importing any of them runs this first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Keep the terminal readable; Beam's worker processes inherit these.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
warnings.filterwarnings("ignore", category=FutureWarning)

__version__ = "0.1.0"
