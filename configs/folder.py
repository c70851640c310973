"""Your own images with local defects, in MVTec AD's layout, on a CPU:

  root/train/good/*.png            normal images only (what the model learns)
  root/test/good/*.png             normal test images
  root/test/<defect>/*.png         defective test images, one folder per kind
  root/ground_truth/<defect>/<name>_mask.png   optional pixel masks

  python -m mscad_jax.main --config=configs/folder.py:image_folder_dir=/path/to/root --workdir=runs/mine
  python -m mscad_jax.export --workdir=runs/mine --output=model_dir
  python -m mscad_jax.score --model=model_dir --output=scores.csv --heatmaps=heat/ new_images/

Sized so that 1,000 training images of 64x64 train, validate and evaluate in under ten
minutes on two CPU cores (experiments/results/folder_defects.md, which also measures it
on a synthetic fabric folder: experiments/make_defect_folder.py). The validation
anomalies are CutPaste patches synthesised on held-out training images (the folder's
own defects stay for the final report). Args: any base field as key=value, e.g.
`image_size=128` or `stage1.epochs=40` for more time and quality.
"""

from mscad_jax import config as base


def get_config(arg: str | None = None):
    c = base.chosen_method(base.base_config())
    c.dataset = "image_folder"
    c.normal_class_name = "good"
    c.image_size = 64
    # The test anomalies are the folder's own defects (anomaly_type stays `object`: the
    # test/<defect> folders); the validation anomalies are synthesised on held-out normals.
    c.local_kind = "cutpaste"
    c.validation.fraction = 0.1
    c.model.depth = 10
    c.model.width = 16
    c.model.num_slots = 64
    c.model.proj_dim = 64
    # A defect is local: the rotation head ranks local defects near chance on
    # Fashion-MNIST (experiments/results/fashion_mnist_local_memory_fit.md) and rotated
    # copies cost four times the encoder passes, so stage 1 trains without them.
    c.stage1.rotations = False
    c.model.rotation_head = False
    c.stage1.batch_size = 64
    c.stage1.epochs = 15
    c.stage1.warmup_epochs = 1
    c.stage1.base_learning_rate = 2.0
    # Where things are matters (the memory is per position) and so does colour: crops keep the whole
    # area (only the aspect-ratio jitter stays: docs/configs.md, `augment`), no flips or colour jitter.
    c.stage1.augment.crop_scale_min = 1.0
    c.stage1.augment.flip = False
    c.stage1.augment.jitter_prob = 0.0
    c.stage1.augment.grayscale_prob = 0.0
    c.stage2.batch_size = 64
    c.stage2.epochs = 5
    c.stage2.learning_rate = 1e-3
    # Stage 2 learns against synthetic scars, the validation holds CutPaste patches: the
    # choice is measured across kinds. The detector's largest per-position distance scores
    # an image; the memory's deviation energy draws the maps (both chosen on validation,
    # experiments/results/fashion_mnist_local_levers.md, tables A and B).
    c.stage2.synthetic_anomalies = ("scar",)
    c.eval.scorer = ("detector",)
    c.eval.detector_pooling = "max"
    c.eval.knn_pooling = "mean"  # the kNN baseline beside the score; flattened 32x32 maps would cost more than the rest
    c.eval.batch_size = 128
    c.log_every_steps = 10
    return base.apply_arg(c, arg)
