"""`python -m experiments.benchmark_transcription` from the repository root: runs
`w2v_jax.cli.benchmark_transcription` (the `w2v-benchmark-transcription` command)."""

from w2v_jax.cli.benchmark_transcription import run

if __name__ == "__main__":
    run()
