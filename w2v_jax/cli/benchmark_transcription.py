"""Transcription measurements with a fine-tuned checkpoint (docs/transcription.md): one JSON record.

    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=boundaries
    w2v-benchmark-transcription --checkpoint=runs/ft_mini_phn --labels=phn --measure=boundaries
    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=long_form
    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=long_form --decoder=beam \
        --lm=w2v_jax/data/corpus/lm/train_3gram.arpa --lexicon=w2v_jax/data/corpus/lm/train_3gram.lexicon.txt
    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=masked
    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=pipeline
    w2v-benchmark-transcription --checkpoint=runs/ft_mini --measure=memory

`boundaries`: median and 90th-percentile boundary error (ms) of the forced alignment of the
manifest's transcripts against the corpus's gold word (letters) or phone (`--labels=phn`) boundaries.
`long_form`: CER and WER of long recordings (`--per_recording` utterances joined with pauses)
transcribed in chunks, against the same utterances transcribed alone; greedy, or `--decoder=beam`
with an LM. `masked`: seconds of transcription and `model.features`, each utterance alone against
padded batches with the masked group norm.
`pipeline`: audio-seconds per second of `transcribe` against transformers' ASR pipeline on the same
exported model and files. `memory`: peak resident memory of a process transcribing a 1-minute
and a 10-minute recording in chunks. Default manifest: the embedded corpus's valid split.
All logic: `w2v_jax.research.transcription_benchmark`.
"""

import functools
import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr.beam_search import DECODERS, make_decoder
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.cli.beam_search_flags import beam_search_options, define_beam_search_flags
from w2v_jax.cli.launching import launch
from w2v_jax.data import default_manifest
from w2v_jax.research import transcription_benchmark as bench

MEASURES = ("boundaries", "long_form", "masked", "pipeline", "memory")


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        checkpoint=flags.DEFINE_string(
            "checkpoint", None, "Fine-tuning workdir or CTC checkpoint folder.", required=True, flag_values=fv
        ),
        measure=flags.DEFINE_enum("measure", "boundaries", MEASURES, "What to measure.", flag_values=fv),
        manifest=flags.DEFINE_string(
            "manifest", None, "Manifest (default: the embedded corpus's valid split).", flag_values=fv
        ),
        labels=flags.DEFINE_enum("labels", "ltr", sorted(SEPARATORS), "The model's labels.", flag_values=fv),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Utterances (or chunks) per forward pass.", flag_values=fv),
        per_recording=flags.DEFINE_integer(
            "per_recording", 5, "long_form: utterances joined into one recording.", flag_values=fv
        ),
        chunk_s=flags.DEFINE_float("chunk_s", 20.0, "long_form: chunk length, seconds.", flag_values=fv),
        decoder=flags.DEFINE_enum(
            "decoder", "greedy", DECODERS, "long_form: greedy, or beam search (--lm, --lexicon).", flag_values=fv
        ),
        **define_beam_search_flags(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpoint, measure = args.checkpoint.value, args.measure.value
    manifest = args.manifest.value or str(default_manifest("valid"))
    record: Mapping[str, object]
    if measure == "boundaries":
        record = bench.boundary_errors(checkpoint, manifest, args.labels.value)
    elif measure == "long_form":
        record = bench.chunked_against_alone(
            checkpoint,
            manifest,
            per_recording=args.per_recording.value,
            chunk_s=args.chunk_s.value,
            batch_size=args.batch_size.value,
            decoder=functools.partial(
                make_decoder,
                decoder=args.decoder.value,
                lm=args.lm.value,
                lexicon=args.lexicon.value,
                options=beam_search_options(args, args.lm_weight.value, args.word_score.value),
            ),
        )
    elif measure == "masked":
        record = bench.masked_speedup(checkpoint, manifest, args.batch_size.value)
    elif measure == "memory":
        record = bench.peak_memory(checkpoint, chunk_s=args.chunk_s.value)
    else:
        record = bench.pipeline_throughput(checkpoint, manifest, args.labels.value, args.batch_size.value)
    print(json.dumps({"measure": measure, **record}, indent=2))


def run() -> None:
    """The `w2v-benchmark-transcription` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
