"""mscad_jax: AnoMem (Anomaly Detection via Multi-Scale Contrasted Memory) in JAX/Flax."""

import os as _os

# TensorFlow (pulled in by TFDS and clu) prints C++ notices when it loads, before any flag
# is parsed. Here it only decodes and resizes images, which oneDNN does not touch, so its
# oneDNN notice goes too. Set either variable yourself to bring them back.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# jaxlib 0.10.2's YNNPACK fusion on CPU returns wrong values for a jitted, vmapped
# matrix-vector product followed by a sum (jax-ml/jax#39103) and crashes or hangs on
# rank-7/8 multiply-reduce patterns (#39257, #40412); the empty fusion type turns it off
# (tests/numerics_check.py: the reproducer is right with it, wrong without; this project's
# own computations agree jit vs eager either way). It must be set before JAX starts its
# CPU backend, so importing mscad_jax sets it unless XLA_FLAGS already names the fusion
# type or MSCAD_KEEP_YNN_FUSION=1.
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
if "xla_cpu_experimental_ynn_fusion_type" not in _os.environ.get("XLA_FLAGS", "") \
        and _os.environ.get("MSCAD_KEEP_YNN_FUSION") != "1":
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_YNN_FLAG}".strip()

__version__ = "0.1.0"
