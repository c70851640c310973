"""mscad_jax: AnoMem (Anomaly Detection via Multi-Scale Contrasted Memory) in JAX/Flax."""

__version__ = "0.1.0"
