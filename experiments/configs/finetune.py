"""Forwards to `w2v_jax/configs/finetune.py` (the fine-tuning variants; see its docstring)."""

from w2v_jax.configs.finetune import VARIANTS, get_config

__all__ = ["VARIANTS", "get_config"]
