"""w2v_jax: wav2vec 2.0 self-supervised speech pretraining in JAX/Flax NNX.

The package root runs nothing but the lazy table below: `import w2v_jax.feature_encoder` runs the
feature encoder and what it imports, and `w2v_jax.checkpoints.load_model(path)` imports the loader
the first time it is read. docs/architecture.md draws the rooms and the model layer's modules.
"""

from w2v_jax.lazy_exports import lazy_exports

__version__ = "0.1.0"

with lazy_exports(globals()):
    from w2v_jax import (
        asr,
        checkpoints,
        cli,
        config,
        configs,
        context_network,
        contrastive_loss,
        ctc,
        data,
        feature_encoder,
        json_files,
        layers,
        masking,
        model,
        pretraining,
        quantization,
        reference,
        representations,
        research,
        sharding,
        training,
        training_draws,
    )

__all__ = [
    "__version__",
    "asr",
    "checkpoints",
    "cli",
    "config",
    "configs",
    "context_network",
    "contrastive_loss",
    "ctc",
    "data",
    "feature_encoder",
    "json_files",
    "layers",
    "masking",
    "model",
    "pretraining",
    "quantization",
    "reference",
    "representations",
    "research",
    "sharding",
    "training",
    "training_draws",
]
