"""`python -m experiments.prepare_manifest` from the repository root: runs `w2v_jax.cli.prepare_manifest` (the
`w2v-prepare-manifest` command)."""

from w2v_jax.cli.prepare_manifest import run

if __name__ == "__main__":
    run()
