"""`python -m experiments.sweep` from the repository root: runs `w2v_jax.cli.sweep` (the `w2v-sweep` command)."""

from w2v_jax.cli.sweep import run

if __name__ == "__main__":
    run()
