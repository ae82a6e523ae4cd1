"""Builds an n-gram language model (ARPA, modified Kneser-Ney) and its lexicon for beam-search decoding.

    w2v-build-lm --text=w2v_jax/data/corpus/train.tsv --order=4 --out=runs/lm/train_4gram.arpa
    w2v-build-lm --text=books.txt,train.tsv --order=3 --prune=0,1,2 --out=lm.arpa
    w2v-build-lm --text=train.tsv --unit=ltr --order=6 --out=ltr_6gram.arpa   # token LM

`--text` takes text files (one sentence a line) and manifests (their `.wrd` labels, else `.ltr`;
`.phn` for `--unit=phn`), normalised as labels and WER references are. `--unit=word` also writes
the lexicon (`X.arpa` -> `X.lexicon.txt`: word, tab, letters ending with `|`; `--vocabulary` keeps
only words spelled in a fine-tuned model's `vocab.json`); `ltr` and `phn` build token LMs for
lexicon-free decoding. All logic: `w2v_jax.asr.lm.build_lm`.
"""

from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr.lm import UNITS, build_lm
from w2v_jax.cli.launching import launch
from w2v_jax.data.vocabulary import Vocabulary


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        text=flags.DEFINE_list(
            "text", None, "Text files and manifests (.tsv) to estimate from.", required=True, flag_values=fv
        ),
        out=flags.DEFINE_string("out", None, "The ARPA file to write.", required=True, flag_values=fv),
        order=flags.DEFINE_integer("order", 4, "n of the n-grams (at least 2).", flag_values=fv),
        unit=flags.DEFINE_enum("unit", "word", UNITS, "word (with a lexicon), ltr or phn (token LMs).", flag_values=fv),
        prune=flags.DEFINE_list(
            "prune",
            [],
            "Per order, drop n-grams counted fewer times (lmplz's --prune: 0 first, non-decreasing).",
            flag_values=fv,
        ),
        vocabulary=flags.DEFINE_string(
            "vocabulary", None, "vocab.json: the lexicon keeps only words spelled in its tokens.", flag_values=fv
        ),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        prune = [int(p) for p in args.prune.value]
        vocabulary = Vocabulary.load(args.vocabulary.value) if args.vocabulary.value else None
        model, path, lexicon = build_lm(
            args.text.value,
            args.out.value,
            order=args.order.value,
            unit=args.unit.value,
            prune=prune,
            vocabulary=vocabulary,
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    counts = ", ".join(f"{len(grams)} {n}-grams" for n, grams in enumerate(model.ngrams, 1))
    print(f"wrote {path} ({counts})" + (f" and {lexicon}" if lexicon else ""))


def run() -> None:
    """The `w2v-build-lm` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
