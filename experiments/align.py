"""`python -m experiments.align` from the repository root: runs `w2v_jax.cli.align` (the `w2v-align` command)."""

from w2v_jax.cli.align import run

if __name__ == "__main__":
    run()
