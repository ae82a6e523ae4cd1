"""`python -m experiments.convert_checkpoint` from the repository root: runs `w2v_jax.cli.convert_checkpoint` (the
`w2v-convert-checkpoint` command)."""

from w2v_jax.cli.convert_checkpoint import run

if __name__ == "__main__":
    run()
