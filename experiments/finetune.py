"""`python -m experiments.finetune` from the repository root: runs `w2v_jax.cli.finetune` (the `w2v-finetune`
command)."""

from w2v_jax.cli.finetune import run

if __name__ == "__main__":
    run()
