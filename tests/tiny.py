"""The tiny config of the test suite, importable without conftest's JAX settings (the
tests that run as users run, with XLA optimisations on, build their jobs from it too)."""

from mscad_jax import config as config_lib


def make_tiny_config(**overrides):
    """A config small enough for a few CPU steps: width 4, 8x8 images, batch 8."""
    c = config_lib.base_config()
    c.image_size = 8
    c.model.depth = 10
    c.model.width = 4
    c.model.num_slots = 8
    c.model.proj_dim = 8
    c.model.key_dim = 4
    c.stage1.batch_size = 8
    c.stage1.epochs = 1
    c.stage1.warmup_epochs = 0
    c.stage2.batch_size = 8
    c.stage2.epochs = 1
    c.stage2.hidden = 4
    c.stage2.embed_dim = 4
    c.eval.batch_size = 16
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    return config_lib.apply_overrides(c, overrides)
