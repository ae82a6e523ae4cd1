"""Transcribes audio with a fine-tuned (CTC) checkpoint: one `path<TAB>text` line per utterance.

    w2v-transcribe --checkpoint=runs/ft_tiny speech.flac other.wav
    w2v-transcribe --checkpoint=runs/ft_tiny --step=200 data/valid.tsv

`--checkpoint` is a fine-tuning workdir (its best model by the validation metric; `--step` picks a
checkpoint), our folder format or a transformers `Wav2Vec2ForCTC` folder with its vocabulary.
Arguments are audio files or manifests (every row). Greedy CTC decoding, batched (layer-norm models
padded; group-norm models padded with the masked group norm), in the text transformers' ASR pipeline gives
(`--labels=phn`: phones separated by spaces, as in `.phn` files).
Recordings longer than `--chunk_s` (default 20 s) are transcribed in chunks with `--stride_s`
overlaps (default a sixth of the chunk; `w2v_jax.asr.long_form`); shorter ones whole. An unreadable
file is reported on stderr (one line) as it is met and the others are transcribed; the exit status
is then 1, with the count (`--strict`: stop at the first one). Files are read, transcribed and
written a few batches at a time (`--batch_size` times `transcription.READ_BATCHES`), so memory does
not grow with their number and the transcripts made before an error are written.
`--timestamps=word|char|phone --output=FILE.jsonl` also writes one JSON line per file,
`{"path", "text", "segments": [{"token", "start", "end", "score"}]}` in seconds
(`w2v_jax.asr.timestamps`).
`--decoder=beam` decodes with beam search instead (`w2v_jax.asr.beam_search`), with an n-gram LM
(`--lm`, ARPA or KenLM binary) and a lexicon (`--lexicon`) or lexicon-free with a token LM:

    w2v-transcribe --checkpoint=runs/ft_mini --decoder=beam \
        --lm=w2v_jax/data/corpus/lm/train_3gram.arpa --lexicon=w2v_jax/data/corpus/lm/train_3gram.lexicon.txt \
        --lm_weight=2 --word_score=1 data/valid.tsv

All logic: `w2v_jax.asr.transcription.transcribe_files`.
"""

import functools
import pathlib
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr import timestamps
from w2v_jax.asr.beam_search import DECODERS, make_decoder
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.transcription import transcribe_files
from w2v_jax.cli.bad_files import BadFiles
from w2v_jax.cli.beam_search_flags import beam_search_options, define_beam_search_flags
from w2v_jax.cli.checkpoint_flags import define_ctc_checkpoint_flags
from w2v_jax.cli.launching import launch
from w2v_jax.cli.long_form_flags import define_long_form_flags


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        **define_ctc_checkpoint_flags(fv),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.", flag_values=fv),
        decoder=flags.DEFINE_enum(
            "decoder", "greedy", DECODERS, "greedy, or beam search (with --lm, --lexicon).", flag_values=fv
        ),
        **define_beam_search_flags(fv),
        **define_long_form_flags(fv),
        timestamps=flags.DEFINE_enum(
            "timestamps",
            None,
            list(timestamps.LEVELS),
            "Also write each file's word, char or phone segments as JSON lines to --output.",
            flag_values=fv,
        ),
        output=flags.DEFINE_string("output", None, "The JSON lines file of --timestamps.", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) < 2:
        raise app.UsageError("give audio files or manifests to transcribe")
    if args.timestamps.value and not args.output.value:
        raise app.UsageError("--timestamps writes to --output=FILE.jsonl: give it")
    bad = BadFiles()
    options = {
        "step": args.step.value,
        "batch_size": args.batch_size.value,
        "separator": SEPARATORS[args.labels.value],
        "decoder": functools.partial(
            make_decoder,
            decoder=args.decoder.value,
            lm=args.lm.value,
            lexicon=args.lexicon.value,
            options=beam_search_options(args, args.lm_weight.value, args.word_score.value),
            separator=SEPARATORS[args.labels.value],
        ),
        "chunk_s": args.chunk_s.value,
        "stride_s": args.stride_s.value,
        "on_bad_file": None if args.strict.value else bad.report,
    }
    try:
        if args.timestamps.value:
            write_timestamps(args, argv[1:], options)
        else:
            for path, text in transcribe_files(args.checkpoint.value, argv[1:], **options):
                print(f"{path}\t{text}", flush=True)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    bad.exit_if_any()


def write_timestamps(args: SimpleNamespace, paths: list[str], options: dict) -> None:
    """`path<TAB>text` on stdout and one JSON line per file in `--output`."""
    results, seconds = timestamps.transcribe_files_with_timestamps(
        args.checkpoint.value, paths, args.timestamps.value, **options
    )
    output = pathlib.Path(args.output.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as out:
        for path, text, found in results:
            print(f"{path}\t{text}", flush=True)
            out.write(timestamps.json_line(path, text, found, seconds) + "\n")
            out.flush()


def run() -> None:
    """The `w2v-transcribe` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
