"""`python -m experiments.prepare_shards` from the repository root: runs `w2v_jax.cli.prepare_shards` (the
`w2v-prepare-shards` command)."""

from w2v_jax.cli.prepare_shards import run

if __name__ == "__main__":
    run()
