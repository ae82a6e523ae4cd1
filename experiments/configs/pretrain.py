"""Forwards to `w2v_jax/configs/pretrain.py` (the pretraining variants; see its docstring)."""

from w2v_jax.configs.pretrain import VARIANTS, get_config

__all__ = ["VARIANTS", "get_config"]
