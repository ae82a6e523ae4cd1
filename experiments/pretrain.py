"""`python -m experiments.pretrain` from the repository root: runs `w2v_jax.cli.pretrain` (the `w2v-pretrain`
command)."""

from w2v_jax.cli.pretrain import run

if __name__ == "__main__":
    run()
