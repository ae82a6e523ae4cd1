"""`python -m experiments.benchmark` from the repository root: runs `w2v_jax.cli.benchmark` (the `w2v-benchmark`
command)."""

from w2v_jax.cli.benchmark import run

if __name__ == "__main__":
    run()
