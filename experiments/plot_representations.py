"""`python -m experiments.plot_representations` from the repository root: runs `w2v_jax.cli.plot_representations` (the
`w2v-plot-representations` command)."""

from w2v_jax.cli.plot_representations import run

if __name__ == "__main__":
    run()
