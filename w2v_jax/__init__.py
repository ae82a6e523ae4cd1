"""w2v_jax: wav2vec 2.0 self-supervised speech pretraining in JAX/Flax NNX."""

__version__ = "0.1.0"
