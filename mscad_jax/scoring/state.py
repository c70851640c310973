"""The fitted scorer state on disk: WORKDIR/scorer/arrays.npz (flat names, no pickle)
and spec.json, written atomically; read back with the names of this version."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from mscad_jax import files
from mscad_jax.scoring.function import ScorerState
from mscad_jax.scoring.spec import LEGACY_PREFIXES, ScorerSpec

SEPARATOR = "."


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'frozen.params.encoder.Conv_0.kernel': array, ...}; empty dicts vanish."""
    out = {}
    for key, value in tree.items():
        if SEPARATOR in key:
            raise ValueError(f"state key {key!r} contains {SEPARATOR!r}")
        if isinstance(value, dict) or hasattr(value, "items"):
            out |= flatten(dict(value.items()), f"{prefix}{key}{SEPARATOR}")
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(SEPARATOR)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def with_defaults(state: dict[str, Any]) -> ScorerState:
    """A state without stage 2 has no detector or centres: empty subtrees."""
    return {"detector": {}, "centers": {}, **state}


def current_name(key: str) -> str:
    """A statistics key of an earlier version ('a/scale2') under today's name."""
    prefix, _, rest = key.partition("/")
    return f"{LEGACY_PREFIXES.get(prefix, prefix)}/{rest}" if rest else key


def save(directory: str, state: ScorerState, spec: ScorerSpec) -> None:
    """Writes `directory/arrays.npz` and `directory/spec.json`, each atomically."""
    flat = flatten(jax.tree.map(np.asarray, state))
    with files.atomic_write(os.path.join(directory, "arrays.npz"), "wb") as f:
        np.savez(f, **flat)
    files.write_json_atomic(os.path.join(directory, "spec.json"), dataclasses.asdict(spec))


def load(directory: str, defaults: ScorerSpec | None = None) -> tuple[ScorerState, ScorerSpec]:
    """The state and spec `save` wrote; a spec field an older spec.json lacks comes from
    `defaults` (the spec of the run's config)."""
    with np.load(os.path.join(directory, "arrays.npz"), allow_pickle=False) as z:
        state = with_defaults(unflatten({k: z[k] for k in z.files}))
    state["stats"] = {current_name(k): v for k, v in state["stats"].items()}
    with open(os.path.join(directory, "spec.json"), encoding="utf-8") as f:
        spec = ScorerSpec.from_json(json.load(f), defaults)
    return state, spec
