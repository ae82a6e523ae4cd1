"""Former home of the evaluation tools; kept so `from w2v_jax.probing import load_model` (documented
in earlier READMEs and notebooks) still works. `load_model` lives in `w2v_jax.checkpoints.loading`."""

from w2v_jax.checkpoints.loading import load_model

__all__ = ["load_model"]
