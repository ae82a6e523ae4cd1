"""`python -m experiments.accelerator_check` from the repository root: runs `w2v_jax.cli.accelerator_check` (the
`w2v-accelerator-check` command)."""

from w2v_jax.cli.accelerator_check import run

if __name__ == "__main__":
    run()
