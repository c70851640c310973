"""Jitted against eager results of the project's computations at the Fashion-MNIST cpu
config's shapes, with XLA optimisations on (as users run it), and the reproducer of the
jaxlib 0.10.2 CPU miscompilation jax-ml/jax#39103 (a jitted, vmapped matrix-vector
product followed by a sum). Prints one JSON line: the largest relative difference of each
computation, and whether the reproducer is wrong. Importing mscad_jax turns the YNNPACK
fusion off (--xla_cpu_experimental_ynn_fusion_type=); MSCAD_KEEP_YNN_FUSION=1 keeps it on.

  python tests/numerics_check.py
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mscad_jax import config as config_lib  # noqa: E402
from mscad_jax import losses, parallel, stage2  # noqa: E402
from mscad_jax.models import anomem  # noqa: E402
from mscad_jax.scoring import function as scoring  # noqa: E402
from mscad_jax.scoring import spec as scoring_spec  # noqa: E402


def relative(a, b) -> float:
    """The largest difference of any array, in units of that array's largest magnitude
    (z-scores cross 0, where an element-wise ratio would only measure rounding)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                     / (np.max(np.abs(np.asarray(y, np.float64))) + 1e-12)) for x, y in zip(a, b))


def jit_vs_eager(fn, *args) -> float:
    jitted = jax.jit(fn)(*args)
    with jax.disable_jit():
        eager = fn(*args)
    return relative(jitted, eager)


def reproducer_39103() -> bool:
    """True when jit gives the wrong value of #39103's float32 reproducer."""
    i = jnp.arange(32_769, dtype=jnp.float32)
    x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)
    matrix = jnp.eye(3, dtype=jnp.float32)
    f = lambda x: jax.vmap(lambda row: jnp.sum((matrix @ row) ** 2))(x)  # noqa: E731
    return float(jax.jit(f)(x)[-1]) != float(f(x)[-1])


def main() -> None:
    config = config_lib.load_config_file(os.path.join(REPO, "configs", "fashion_mnist.py"), "cpu=True")
    rng = np.random.default_rng(0)
    out = {}
    # Stage 1's terms: 64 images x 4 rotations x 2 views, proj_dim 64.
    rows, dim = 4 * config.stage1.batch_size, config.model.proj_dim
    u, v = (jnp.asarray(rng.normal(size=(rows, dim)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.uniform(size=rows) < 0.9)
    out["nt_xent"] = jit_vs_eager(lambda a, b, m: losses.nt_xent(a, b, 0.5, m), u, v, mask)
    slots = jnp.asarray(rng.normal(size=(config.model.num_slots, 128)), jnp.float32)
    out["memory_variance"] = jit_vs_eager(losses.memory_variance, slots)
    deviation = jnp.asarray(rng.normal(size=(2 * rows, 14, 14, 32)), jnp.float32)
    out["memory_reconstruction"] = jit_vs_eager(losses.memory_reconstruction, deviation,
                                                jnp.ones(2 * rows, bool))
    # Stage 2: distances and Deep SAD on 128 images + their synthetic copies, three scales.
    names = anomem.scale_names(config.model.scales)
    emb = {n: jnp.asarray(rng.normal(size=(256, config.stage2.embed_dim)), jnp.float32) for n in names}
    centers = {n: jnp.asarray(rng.normal(size=config.stage2.embed_dim), jnp.float32) for n in names}
    labelled = jnp.arange(256) >= 128
    out["stage2_distances_deep_sad"] = jit_vs_eager(
        lambda e, c: losses.deep_sad_loss(stage2.distances(e, c, names), labelled), emb, centers)
    # The scoring function: the model with its initial weights, a fitted bank of 600
    # normal images, one evaluation batch of 512.
    model = anomem.AnoMem(**config.model)
    images = rng.integers(0, 256, (1112, 28, 28, 1), dtype=np.uint8)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1)), train=False))(jax.random.key(0))
    frozen = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    # The config's memory fit (per-position prototypes of the 600 normal images).
    frozen = stage2.fit_memory(config, model, frozen, images[:600], parallel.make_mesh())
    det = stage2.make_detector(config)
    det_params = jax.jit(lambda k: det.init(k, anomem.deviation_maps(
        anomem.frozen_outputs(model, frozen, jnp.zeros((1, 28, 28, 1))), names)))(jax.random.key(1))
    # Centres of the embeddings' size: random (conv detector) or 0 (metric detector).
    centers = jax.tree.map(lambda e: jnp.zeros(e.shape[1:]) if det.zero_centre else
                           jnp.asarray(rng.normal(size=e.shape[1:]), jnp.float32),
                           jax.eval_shape(lambda p: det.apply(p, anomem.deviation_maps(
                               anomem.frozen_outputs(model, frozen, jnp.zeros((1, 28, 28, 1))), names)), det_params))
    spec = scoring_spec.from_config(config)
    raw = jax.jit(scoring.raw_score_function(model, det, spec.knn_pooling))(frozen, det_params, centers, images[:600])
    state, spec = scoring.fit({k: np.asarray(x) for k, x in raw.items() if not k.startswith("map/")},
                              {"frozen": frozen, "detector": det_params, "centers": centers}, spec,
                              normal_images=images[:600])
    score = scoring.make_scorer(model, det, spec)
    out["scoring_function"] = jit_vs_eager(lambda s, x: {k: v for k, v in score(s, x).items() if k != "map"},
                                           state, jnp.asarray(images[600:]))
    print(json.dumps({"jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""), "relative_difference": out,
                      "reproducer_39103_wrong": reproducer_39103()}))


if __name__ == "__main__":
    main()
