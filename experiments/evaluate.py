"""`python -m experiments.evaluate` from the repository root: runs `w2v_jax.cli.evaluate` (the `w2v-evaluate`
command)."""

from w2v_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
