"""`python -m experiments.transcribe` from the repository root: runs `w2v_jax.cli.transcribe` (the `w2v-transcribe`
command)."""

from w2v_jax.cli.transcribe import run

if __name__ == "__main__":
    run()
