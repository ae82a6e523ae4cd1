"""`python -m experiments.compare_pytorch` from the repository root: runs `w2v_jax.cli.compare_pytorch` (the
`w2v-compare-pytorch` command)."""

from w2v_jax.cli.compare_pytorch import run

if __name__ == "__main__":
    run()
