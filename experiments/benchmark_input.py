"""`python -m experiments.benchmark_input` from the repository root: runs `w2v_jax.cli.benchmark_input` (the
`w2v-benchmark-input` command)."""

from w2v_jax.cli.benchmark_input import run

if __name__ == "__main__":
    run()
