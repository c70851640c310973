"""Scoring: the one function that maps uint8 images to every score and map.

- `spec`: `ScorerSpec`, what the score is (scorers, scale weights, k-NN settings), built
  from a config in one place (`spec.from_config`); the only reader of scoring settings.
- `function`: the raw per-scale scores of a trained model, the pure scoring function
  `(state, images) -> outputs` and `fit`, which measures its state on normal data.
- `knn`: the one k-nearest-neighbour distance (statistics, test scoring, the raw-pixel
  floor and the `pixel_knn` scorer).
- `fusion`: standardisation with normal statistics, per-scale and per-scorer sums, maps.
- `state`: the fitted state on disk (arrays.npz + spec.json).

Evaluation jits the scoring function over the mesh, `mscad_jax.export` serialises it
with jax.export and `mscad_jax.score` runs the exported artifact, so the three cannot
disagree. This package imports no training code.
"""
