"""`python -m tools.continued_pretraining` from the repository root: the continued-pretraining
experiment in miniature (`w2v_jax.research.continued_pretraining`, docs/continued_pretraining.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.launching import launch
from w2v_jax.research.continued_pretraining import results_table, run_experiment


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The experiment's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        data=flags.DEFINE_string("data", "/tmp/dutch", "tools.make_new_language_corpus's folder.", flag_values=fv),
        out=flags.DEFINE_string("out", "/tmp/continued", "The runs' folder (a rerun resumes).", flag_values=fv),
        pretrained=flags.DEFINE_string("pretrained", "", "An existing pretrain.py:tiny run (A).", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = pathlib.Path(args.out.value)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = pathlib.Path(args.pretrained.value) if args.pretrained.value else None
    results = run_experiment(pathlib.Path(args.data.value), out, pretrained)
    print(results_table(results))


def run() -> None:
    """`python -m tools.continued_pretraining`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
