"""mscad_jax: AnoMem (Anomaly Detection via Multi-Scale Contrasted Memory) in JAX/Flax."""

import os as _os

# TensorFlow (pulled in by TFDS and clu) prints C++ notices when it loads, before any flag
# is parsed. Here it only decodes and resizes images, which oneDNN does not touch, so its
# oneDNN notice goes too. Set either variable yourself to bring them back.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
