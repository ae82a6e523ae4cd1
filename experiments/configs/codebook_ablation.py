"""Forwards to `w2v_jax/configs/codebook_ablation.py` (the codebook-size sweep; see its docstring)."""

from w2v_jax.configs.codebook_ablation import get_config

__all__ = ["get_config"]
