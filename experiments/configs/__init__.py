"""The configs live in `w2v_jax/configs/`; these files keep `--config=experiments/configs/NAME.py` and
`from experiments.configs import NAME` working from the repository root."""
