"""The base experiment config, `key=value` config arguments, and config validation.

Every experiment file in `configs/` starts from `base_config()` and overrides fields,
so every field is documented once, here. `validate()` runs before any work starts and
raises `ConfigError` with one message naming the field, the bad value and what is
allowed.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import ml_collections

from mscad_jax.data.sources import DATASETS  # the registry lives beside the readers
from mscad_jax.errors import ConfigError

PROTOCOLS = ("one_class", "unbalanced", "ood")
ANOMALY_TYPES = ("object", "style", "local")
MODES = ("train", "evaluate")
MEMORY_FITS = ("none", "kmeans", "maps")  # stage2.memory_fit
MAP_DTYPES = ("float32", "float16")  # stage2.memory_fit_dtype (retrieval computes in the features' dtype)
# Fields earlier versions had: a workdir's config.json that names one still evaluates and
# exports; the field is ignored with one warning line. Why each went: the closing notes of
# issue 25 (code no config used, levers measured without gain, or moved to experiments/).
RETIRED_FIELDS = (
    "model.local_head", "stage1.local_anomalies", "stage1.local_weight",
    "eval.knn_rotations", "eval.knn_flip", "eval.patch_knn", "eval.patch_bank_size",
    "eval.patch_knn_neighbours", "eval.patch_knn_radius", "eval.patch_knn_distance",
    "eval.patch_knn_ridge_penalty", "eval.patch_knn_window", "eval.patch_knn_neighbours_on",
    "eval.patch_knn_weights", "eval.patch_knn_pixels", "eval.patch_knn_pixels_window",
    # Issue 27: neighbour slots measured no gain (experiments/results/fashion_mnist_local_levers.md, table B).
    "stage2.memory_fit_radius",
    # Issue 26: a weight for the given labels beside rotated copies measured no gain
    # (experiments/results/fashion_mnist_unbalanced_levers.md).
    "stage2.labelled_weight",
    # Issue 26: holding the metric detector near the identity lost on validation over five
    # classes (experiments/results/fashion_mnist_unbalanced_levers.md, "Identity prior").
    "stage2.identity_weight",
    # Issue 26: stage 2's input augmentation, identity in every config, measured no gain
    # for the few labels (fashion_mnist_unbalanced_levers.md, "Stage 2 input augmentation").
    "stage2.augment",
    # Issue 26: a residual branch beside the metric detector gained within noise on the
    # unbalanced score while the detector alone lost (fashion_mnist_unbalanced_levers.md,
    # "Residual branch").
    "stage2.metric_hidden",
    # Issue 26: the score chosen per run on validation gained within noise while the detector
    # stayed in it (experiments/results/fashion_mnist_scorer_selection.md).
    "eval.scorer_candidates",
)


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults; experiment configs override what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameters, data order, augmentations and anomaly draws.

    # ---- data -------------------------------------------------------------------
    c.dataset = "digits"  # One of DATASETS; `image_folder` reads `image_folder_dir`.
    c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS_DATA_DIR or TFDS default.
    c.image_folder_dir = ml_collections.config_dict.placeholder(str)  # root/{train,test}/<class>/<image> for `image_folder`.
    c.image_size = 32  # Images are resized to image_size x image_size.
    c.protocol = "one_class"  # one_class | unbalanced | ood (DESIGN section 2).
    c.normal_class = 0  # Normal class index (or super-class index when coarse_label).
    c.normal_class_name = ml_collections.config_dict.placeholder(str)  # image_folder: the normal class's folder (good); `normal_class=good` sets it.
    c.coarse_label = False  # CIFAR-100: use the 20 super-classes as classes.
    c.anomaly_ratio = 0.05  # unbalanced: labelled anomalies per normal training image, in (0, 1].
    c.known_anomaly_classes = ()  # unbalanced: classes the labelled anomalies come from; () = all others.
    c.ood_datasets = ("svhn_cropped",)  # ood: datasets whose test splits are the anomalies.
    c.anomaly_type = "object"  # object (other classes) | style (corruptions) | local (pasted patch/scar).
    c.style_corruption = "gaussian_noise"  # style: one of data.anomalies.STYLE_CORRUPTIONS.
    c.style_severity = 3  # style: corruption severity in 1..5.
    c.local_kind = "cutpaste"  # local: cutpaste (a patch of the image pasted elsewhere) | scar (a thin rectangle of random colour).
    c.max_train_examples = 0  # >0 caps the training set (quick experiments); 0 = all.
    c.max_test_examples = 0  # >0 caps the test set, drawn with the seed; 0 = all.

    # ---- validation (DESIGN section 2: every choice is made on it, never on the test split)
    c.validation = ml_collections.ConfigDict()
    c.validation.fraction = 0.0  # Share of the normal training images held out (never trained on); 0 = no validation split.
    c.validation.anomalies_per_normal = 1.0  # Validation anomalies per held-out normal, drawn from the TRAIN split (see docs/protocols.md).

    # ---- model ------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.depth = 18  # ResNet depth: 10, 18, 34 (basic blocks) or 50 (bottlenecks).
    c.model.width = 64  # Channels of the first stage; stage s has width * 2**(s-1).
    c.model.scales = (2, 3, 4)  # Encoder stages that get a memory, a head and a detector.
    c.model.num_slots = 256  # Stored patterns per memory (N_s).
    c.model.beta = 10.0  # Inverse temperature of the memory's softmax attention.
    c.model.projected_memory = False  # Projected Hopfield form softmax(b (fWq)(MWk)^T)(MWkWv).
    c.model.key_dim = 64  # Key/query size of the projected memory.
    c.model.proj_dim = 128  # Output size of each projection head g_s.
    c.model.deviation = "normalized"  # D_s: normalized (unit F - unit R per position) | difference (F - R, DESIGN).
    # normalized is the default: raw F - R is dominated by feature norms, and it costs the
    # detector and A0 on validation (experiments/results/fashion_mnist_ablation_2026_12_06.md,
    # row deviation_difference).
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay float32).
    c.model.rotation_head = False  # 4-way rotation classifier on the deepest scale (CSI); trained when stage1.rotations.

    # ---- stage 1: memory-augmented contrastive learning ----------------------------
    c.stage1 = ml_collections.ConfigDict()
    c.stage1.batch_size = 256  # Global batch (all devices, all hosts).
    c.stage1.epochs = 100  # Passes over the normal training set.
    c.stage1.base_learning_rate = 1.0  # LARS peak lr = base * batch_size / 256.
    c.stage1.warmup_epochs = 10  # Linear warm-up, then cosine decay to 0.
    c.stage1.weight_decay = 1e-6  # Not applied to BN, biases and memory slots.
    c.stage1.momentum = 0.9  # LARS momentum.
    c.stage1.temperature = 0.5  # NT-Xent temperature tau.
    c.stage1.scale_weights = ()  # lambda_s per configured scale; () = all 1.
    c.stage1.memory_weight = 1.0  # Memory-augmented NT-Xent (u of one view vs the memory's v of the other); the paper's term.
    c.stage1.instance_weight = 0.0  # Plain NT-Xent between the two views' u (SimCLR), beside the memory term.
    c.stage1.reconstruction_weight = 0.0  # mean ||D_s||^2 of normal images with F_s held fixed: the memory learns to reconstruct F_s.
    c.stage1.rotations = False  # CSI shifted instances: images also enter rotated by 90/180/270 as other instances (batch x4).
    c.stage1.rotation_weight = 1.0  # Cross-entropy weight of the rotation head (model.rotation_head; needs rotations).
    c.stage1.variance_weight = 1.0  # mu, weight of the memory variance hinge.
    c.stage1.labelled_anomalies = True  # unbalanced: labelled anomalies enter stage 1 (negatives + repulsion); False: stage 2 only.
    c.stage1.repulsion_weight = 1.0  # Weight of the labelled-anomaly repulsion term.
    c.stage1.repulsion_margin = 0.0  # Cosine margin of the repulsion term.
    c.stage1.synthetic_anomalies = ()  # Kinds (cutpaste, scar, rotation) of one corrupted copy per image, a labelled anomaly (batch x2).
    c.stage1.augment = augment_section()  # The views of the contrastive task (fields: augment_section).
    # ---- stage 2: deviation-map detectors -----------------------------------------
    c.stage2 = ml_collections.ConfigDict()
    c.stage2.batch_size = 256  # Global batch.
    c.stage2.epochs = 20  # Passes over the training set.
    c.stage2.learning_rate = 1e-4  # Adam learning rate (as Deep SVDD / Deep SAD).
    c.stage2.weight_decay = 1e-6  # Decoupled weight decay (AdamW).
    c.stage2.detector = "conv"  # conv (DESIGN's CNN, centre = mean normal embedding) | metric (learned quadratic form of D_s, centre 0; models.detector).
    c.stage2.hidden = 64  # Channels of the detector's convolutions.
    c.stage2.embed_dim = 32  # Detector output size.
    c.stage2.pooling = "mean"  # mean (global average pooling, DESIGN) | flatten (keeps every position).
    c.stage2.memory_fit = "none"  # none (stage 1's memory) | kmeans (per-position slots fitted to normal features after stage 1) | maps (whole normal maps, ridge retrieval); models.fitted_memory.
    c.stage2.memory_fit_slots = 16  # kmeans: prototypes per position of each scale's map; maps: whole maps per scale.
    c.stage2.memory_fit_beta = 50.0  # kmeans: inverse temperature of the fitted memory's retrieval.
    c.stage2.memory_fit_scales = ()  # The scales (of model.scales) whose memory is fitted; () = all; the others keep stage 1's.
    c.stage2.memory_fit_neighbours = 50  # maps: the nearest stored maps each map's ridge reconstruction is drawn from.
    c.stage2.memory_fit_window = 1  # maps: the deviation averaged over this many x this many positions.
    c.stage2.memory_fit_dtype = "float32"  # maps: how the stored maps are kept (float32 | float16: half the size).
    c.stage2.eta = 1.0  # Deep SAD weight of labelled anomalies.
    c.stage2.center_eps = 0.1  # Centre coordinates are pushed away from 0 by at least this.
    c.stage2.synthetic_anomalies = ()  # Kinds added to every batch as labelled anomalies: cutpaste, scar, rotation.
    c.stage2.position_labels = False  # metric detector: Deep SAD per position, the positions under a synthetic defect as anomalies (False: per image).

    # ---- evaluation -------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 512  # Global batch for scoring.
    c.eval.score_weights = ()  # w_s per configured scale for the final score; () = all 1.
    c.eval.detector_weights = ()  # w_s per configured scale for the detector scorer and the localisation maps; () = eval.score_weights.
    c.eval.scorer = ("detector",)  # Standardised scorers summed into the score; see mscad_jax.scoring.spec.SCORERS.
    c.eval.knn_k = 5  # Neighbours of the knn scorer (distance of its feature vectors to normal training images).
    c.eval.knn_metric = "cosine"  # knn distance: cosine (L2-normalised vectors) | euclidean (raw vectors: keeps their norm).
    c.eval.knn_pooling = "mean"  # knn vectors: mean (GAP of each scale) | flatten (keeps where each feature is).
    c.eval.map_source = "memory"  # Localisation maps: memory (||D_s||^2 per position) | detector (the metric detector's ||W_s D_s||^2 per position).
    c.eval.detector_pooling = "mean"  # The metric detector's image score per scale: mean | max over positions of its distance.
    c.eval.pixel_threshold_percentile = 99.0  # A map pixel above this percentile of held-out normal images' map pixels is marked defective (masks and boxes of mscad_jax.score).
    c.eval.pixel_floor = True  # Also report the raw-pixel k-NN AUROC (k = scoring.spec.PIXEL_FLOOR_K) of the same split: the floor to clear.
    c.eval.linear_eval = False  # Linear probe on frozen pooled features of the full dataset.
    c.eval.linear_eval_max_examples = 20000  # Cap on linear-probe training images.
    c.eval.plots = True  # ROC, histograms, top anomalies with heatmaps.
    c.eval.num_top_anomalies = 8  # Images in the top-anomalies grid.

    # ---- bookkeeping --------------------------------------------------------------
    c.log_every_steps = 50  # Scalars to TensorBoard/log every N steps.
    c.checkpoint_every_steps = 500  # Checkpoint cadence (and always at the end of a stage).
    c.max_checkpoints_to_keep = 2  # Newest checkpoints kept per stage.
    return c


def chosen_method(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the levers chosen by measurement on Fashion-MNIST on top of the paper's form,
    which `base_config()` keeps: CSI-style rotated copies with a 4-way rotation head, an
    instance NT-Xent beside the memory terms, the memory asked to reconstruct the features
    (experiments/results/README.md); after stage 1, a memory of per-position prototypes
    fitted to the normal features and the metric detector on its deviation maps, trained
    against rotated copies, scored with the rotation head beside it (measured on
    validation: experiments/results/fashion_mnist_memory_fit.md; the score settled over
    three seeds in experiments/results/fashion_mnist_seeds_2026_12_06.md). Each is one
    field; set it back for the paper's form."""
    c.stage1.rotations = True
    c.model.rotation_head = True
    c.stage1.instance_weight = 1.0
    c.stage1.reconstruction_weight = 1.0
    c.stage2.memory_fit = "kmeans"
    c.stage2.detector = "metric"
    c.stage2.synthetic_anomalies = ("rotation",)
    c.eval.scorer = ("detector", "rotation")
    # The kNN baseline reported beside the score (not in it) compares flattened maps.
    c.eval.knn_pooling = "flatten"
    return c


def augment_section() -> ml_collections.ConfigDict:
    """The `stage1.augment` section: read by data.augment.from_config."""
    a = ml_collections.ConfigDict()
    # 1 is not the identity: the box's aspect ratio is still drawn from [3/4, 4/3] and clipped to the
    # image (CSI's crop), so one side keeps 87-100% and is stretched back.
    a.crop_scale_min = 0.08  # Random resized crop area range [min, 1] (1: the whole area, see above).
    a.flip = True  # Horizontal flips.
    a.jitter_strength = (0.4, 0.4, 0.4, 0.1)  # Brightness, contrast, saturation, hue.
    a.jitter_prob = 0.8  # Probability of jitter (gray images: brightness and contrast only).
    a.grayscale_prob = 0.2  # Probability of grayscale (RGB only).
    a.blur_prob = 0.0  # Probability of a Gaussian blur, sigma ~ U[blur_sigma] pixels.
    a.blur_sigma = (0.1, 2.0)  # Blur sigma range in pixels.
    a.noise_std = 0.0  # Additive Gaussian noise, std ~ U[0, noise_std]; 0 = off.
    return a


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=path:arg` would load it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def parse_arg(arg: str | None) -> dict[str, Any]:
    """Parses `normal_class=3,protocol=unbalanced` into typed values.

    Values are read as int, float, bool or None when they look like one, else kept as
    strings; `a+b+c` gives a tuple (for class lists and dataset lists).
    """
    if not arg:
        return {}
    out = {}
    for item in arg.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def _parse_value(text: str) -> Any:
    if "+" in text:
        return tuple(_parse_value(t) for t in text.split("+") if t)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Overrides top-level or dotted fields from a config argument string."""
    return apply_overrides(config, parse_arg(arg))


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted name (`stage1.augment.crop_scale_min`)."""
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += field_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def has_field(config: ml_collections.ConfigDict, field: str) -> bool:
    """Whether the dotted name is a field of `config`."""
    target = config
    for part in field.split("."):
        if not isinstance(target, ml_collections.ConfigDict) or part not in target:
            return False
        target = target[part]
    return True


def unknown_field(config: ml_collections.ConfigDict, field: str) -> ConfigError:
    """The error for a field name the config does not have, with the nearest valid names."""
    nearest = difflib.get_close_matches(field, field_names(config), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(nearest)}?" if nearest else "; the fields are documented in mscad_jax/config.py"
    return ConfigError(f"config has no field {field!r}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets `field` or `section.field` for each item; unknown fields are an error."""
    for key, value in overrides.items():
        if key == "normal_class" and isinstance(value, str):
            key = "normal_class_name"  # `normal_class=good`: an image folder's class by name
        if not has_field(config, key):
            raise unknown_field(config, key)
        *parents, leaf = key.split(".")
        target = _get(config, ".".join(parents)) if parents else config
        if isinstance(target[leaf], tuple) and not isinstance(value, tuple):
            value = (value,)
        try:
            target[leaf] = value
        except TypeError as e:  # ConfigDict's type check, e.g. a string for an int field.
            raise ConfigError(f"config argument {key}={value!r} has the wrong type: {e}") from None
    return config


def from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config a run wrote to WORKDIR/config.json, rebuilt on the base config (JSON
    lists back to tuples). A field of `RETIRED_FIELDS` is ignored with one warning line;
    any other field this version does not have is an error."""
    def leaves(d: dict[str, Any], prefix: str = ""):
        for key, value in d.items():
            if isinstance(value, dict) and f"{prefix}{key}" not in RETIRED_FIELDS:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", tuple(value) if isinstance(value, list) else value

    fields = dict(leaves(saved))
    retired = sorted(f for f in fields if f in RETIRED_FIELDS)
    if retired:
        print(f"warning: ignoring fields this version retired: {', '.join(retired)}", file=sys.stderr)
    return apply_overrides(base_config(), {k: v for k, v in fields.items() if k not in RETIRED_FIELDS})


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a dotted field name."""
    for part in field.split("."):
        config = config[part]
    return config


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Classes the protocol chooses among (super-classes for coarse CIFAR-100)."""
    fine, coarse, _ = DATASETS[config.dataset]
    if config.coarse_label:
        return coarse
    return fine


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError for the first field that cannot work.

    Runs before anything is written or loaded. `num_devices` (global) is checked
    against the batch sizes when given. Each section is checked beside the registry of
    the values it allows (they are imported here: they pull in JAX).
    """
    from mscad_jax.scoring import spec as scoring_spec

    _check_data(config)
    _check_model(config.model, config.image_size)
    _check_stages(config)
    scoring_spec.check_eval_section(config.eval, config.model, config.stage2.detector, _fail)
    if config.eval.batch_size <= 0:
        _fail("eval.batch_size", config.eval.batch_size, "must be positive")
    if num_devices is not None:
        for field in ("stage1.batch_size", "stage2.batch_size", "eval.batch_size"):
            if _get(config, field) % num_devices:
                _fail(field, _get(config, field),
                      f"the global batch must be divisible by the number of devices ({num_devices})")


def _check_data(config: ml_collections.ConfigDict) -> None:
    """Dataset, protocol and anomaly fields."""
    from mscad_jax.data.anomalies import LOCAL_ANOMALIES, SEVERITIES, STYLE_CORRUPTIONS

    for field, allowed in (("dataset", DATASETS), ("protocol", PROTOCOLS), ("anomaly_type", ANOMALY_TYPES),
                           ("style_corruption", STYLE_CORRUPTIONS), ("style_severity", SEVERITIES),
                           ("local_kind", LOCAL_ANOMALIES)):
        if config[field] not in allowed:
            _fail(field, config[field], f"allowed: {', '.join(map(str, allowed))}")
    if config.protocol == "ood" and config.anomaly_type != "object":
        _fail("anomaly_type", config.anomaly_type, "the ood protocol only takes 'object'")
    if config.coarse_label and DATASETS[config.dataset][1] is None:
        _fail("coarse_label", config.coarse_label, f"dataset {config.dataset!r} has no coarse labels")
    if config.dataset == "image_folder":
        if not config.image_folder_dir or not os.path.isdir(config.image_folder_dir):
            _fail("image_folder_dir", config.image_folder_dir, "must be an existing directory holding train/ and test/")
        if config.normal_class_name is None and config.normal_class < 0:
            _fail("normal_class", config.normal_class, "a class index >= 0, or name the folder in normal_class_name")
    elif config.normal_class_name is not None:
        _fail("normal_class_name", config.normal_class_name, "only image_folder datasets have named classes")
    else:
        n = num_classes(config)
        if not isinstance(config.normal_class, int) or not 0 <= config.normal_class < n:
            _fail("normal_class", config.normal_class, f"an integer in 0..{n - 1} for {config.dataset}")
        for k in config.known_anomaly_classes:
            if not isinstance(k, int) or not 0 <= k < n or k == config.normal_class:
                _fail("known_anomaly_classes", tuple(config.known_anomaly_classes),
                      f"integers in 0..{n - 1}, other than normal_class={config.normal_class}")
    if config.protocol == "unbalanced" and not 0.0 < config.anomaly_ratio <= 1.0:
        _fail("anomaly_ratio", config.anomaly_ratio, "must be in (0, 1]")
    if config.protocol == "ood":
        if not config.ood_datasets:
            _fail("ood_datasets", tuple(config.ood_datasets), "name at least one dataset")
        for name in config.ood_datasets:
            if name not in DATASETS or name == "image_folder":
                _fail("ood_datasets", tuple(config.ood_datasets),
                      f"allowed: {', '.join(d for d in DATASETS if d != 'image_folder')}")
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        _fail("data_dir", config.data_dir, "directory does not exist")
    if config.image_size < 8:
        _fail("image_size", config.image_size, "must be at least 8")
    if not 0.0 <= config.validation.fraction < 1.0:
        _fail("validation.fraction", config.validation.fraction, "a share in [0, 1) of the normal training images")
    if not config.validation.anomalies_per_normal > 0:
        _fail("validation.anomalies_per_normal", config.validation.anomalies_per_normal, "must be > 0")


def _check_model(m: ml_collections.ConfigDict, image_size: int) -> None:
    """The `model` section."""
    from mscad_jax.models.anomem import DEVIATIONS
    from mscad_jax.models.resnet import RESNET_LAYOUTS

    scales = tuple(m.scales)
    if not scales or len(set(scales)) != len(scales) or not set(scales) <= {1, 2, 3, 4}:
        _fail("model.scales", scales, "a non-empty set of distinct stages from 1, 2, 3, 4")
    if m.depth not in RESNET_LAYOUTS:
        _fail("model.depth", m.depth, f"allowed: {', '.join(map(str, RESNET_LAYOUTS))}")
    if m.deviation not in DEVIATIONS:
        _fail("model.deviation", m.deviation, f"allowed: {', '.join(DEVIATIONS)}")
    if m.dtype not in ("float32", "bfloat16"):
        _fail("model.dtype", m.dtype, "allowed: float32, bfloat16")
    for field in ("width", "num_slots", "proj_dim", "key_dim"):
        if m[field] <= 0:
            _fail(f"model.{field}", m[field], "must be a positive integer")
    if m.beta <= 0:
        _fail("model.beta", m.beta, "must be positive")


def _check_stages(config: ml_collections.ConfigDict) -> None:
    """The `stage1` and `stage2` sections and the bookkeeping cadences."""
    from mscad_jax.data.anomalies import SYNTHETIC_ANOMALIES
    from mscad_jax.models.detector import DETECTORS, POOLINGS

    for stage in ("stage1", "stage2"):
        synthetic = tuple(config[stage].synthetic_anomalies)
        if len(set(synthetic)) != len(synthetic) or not set(synthetic) <= set(SYNTHETIC_ANOMALIES):
            _fail(f"{stage}.synthetic_anomalies", synthetic, f"distinct kinds from {', '.join(SYNTHETIC_ANOMALIES)}")
    if config.stage2.pooling not in POOLINGS:
        _fail("stage2.pooling", config.stage2.pooling, f"allowed: {', '.join(POOLINGS)}")
    if config.stage2.detector not in DETECTORS:
        _fail("stage2.detector", config.stage2.detector, f"allowed: {', '.join(DETECTORS)}")
    if config.stage2.memory_fit not in MEMORY_FITS:
        _fail("stage2.memory_fit", config.stage2.memory_fit, f"allowed: {', '.join(MEMORY_FITS)}")
    if config.stage2.memory_fit_dtype not in MAP_DTYPES:
        _fail("stage2.memory_fit_dtype", config.stage2.memory_fit_dtype, f"allowed: {', '.join(MAP_DTYPES)}")
    fit_scales = tuple(config.stage2.memory_fit_scales)
    if len(set(fit_scales)) != len(fit_scales) or not set(fit_scales) <= set(tuple(config.model.scales)):
        _fail("stage2.memory_fit_scales", fit_scales,
              f"distinct scales from model.scales={tuple(config.model.scales)}, or () for all")
    if config.stage2.memory_fit == "maps" and config.stage2.memory_fit_neighbours > config.stage2.memory_fit_slots:
        _fail("stage2.memory_fit_neighbours", config.stage2.memory_fit_neighbours,
              f"at most stage2.memory_fit_slots={config.stage2.memory_fit_slots}: the ridge draws on stored maps")
    if config.stage2.position_labels and config.stage2.detector != "metric":
        _fail("stage2.position_labels", config.stage2.position_labels,
              "only the metric detector scores every position: set stage2.detector='metric' (or this False)")
    if config.model.rotation_head and not config.stage1.rotations:
        _fail("stage1.rotations", config.stage1.rotations,
              "model.rotation_head=True is trained on rotated copies: set True (or the head False)")
    weights = tuple(config.stage1.scale_weights)
    if weights and len(weights) != len(tuple(config.model.scales)):
        _fail("stage1.scale_weights", weights,
              f"one weight per scale in model.scales={tuple(config.model.scales)}, or () for all 1")
    positive = ("stage1.batch_size", "stage1.epochs", "stage1.base_learning_rate", "stage1.temperature",
                "stage2.batch_size", "stage2.epochs", "stage2.learning_rate", "stage2.hidden", "stage2.embed_dim",
                "stage2.memory_fit_slots", "stage2.memory_fit_beta", "stage2.memory_fit_neighbours",
                "stage2.memory_fit_window",
                "log_every_steps", "checkpoint_every_steps")
    for field in positive:
        if not _get(config, field) > 0:
            _fail(field, _get(config, field), "must be positive")
    non_negative = ("stage1.warmup_epochs", "stage1.memory_weight", "stage1.instance_weight",
                    "stage1.variance_weight", "stage1.reconstruction_weight", "stage1.repulsion_weight",
                    "stage1.rotation_weight", "stage2.eta")
    for field in non_negative:
        if not _get(config, field) >= 0:
            _fail(field, _get(config, field), "must be >= 0")
    _check_augment("stage1.augment", config.stage1.augment)


def _check_augment(section: str, a: ml_collections.ConfigDict) -> None:
    """An `augment` section (augment_section)."""
    for name in ("jitter_prob", "grayscale_prob", "blur_prob"):
        if not 0.0 <= a[name] <= 1.0:
            _fail(f"{section}.{name}", a[name], "a probability in [0, 1]")
    if not 0.0 < a.crop_scale_min <= 1.0:
        _fail(f"{section}.crop_scale_min", a.crop_scale_min, "must be in (0, 1]")
    sigma = tuple(a.blur_sigma)
    if len(sigma) != 2 or not 0.0 < sigma[0] <= sigma[1]:
        _fail(f"{section}.blur_sigma", sigma, "a range (low, high) with 0 < low <= high, in pixels")
    if not a.noise_std >= 0:
        _fail(f"{section}.noise_std", a.noise_std, "must be >= 0")
