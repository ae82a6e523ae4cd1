"""The configs live in `w2v_jax/configs/`; these files keep `--config=experiments/configs/NAME.py` and
`from experiments.configs import NAME` working from the repository root."""

from w2v_jax.configs import define_config_flag, resolve_config_path, unknown_field_message

__all__ = ["define_config_flag", "resolve_config_path", "unknown_field_message"]
