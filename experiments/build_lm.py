"""`python -m experiments.build_lm` from the repository root: runs `w2v_jax.cli.build_lm` (the `w2v-build-lm`
command)."""

from w2v_jax.cli.build_lm import run

if __name__ == "__main__":
    run()
