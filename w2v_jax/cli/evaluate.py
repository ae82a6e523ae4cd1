"""Evaluates a checkpoint: pretraining objective on a validation split, codebook usage, phone probes.

    w2v-evaluate --checkpoint=runs/tiny --output=runs/tiny/eval
    w2v-evaluate --checkpoint=hf_folder --manifest=valid.tsv --probe_train_manifest=train.tsv

`--checkpoint` is a training workdir (newest checkpoint, or `--step`), our folder
(`checkpoints.folder.save_checkpoint`) or a transformers folder. Defaults: the embedded corpus'
valid split (the objective's set) and both splits for the linear frame phone probe of every layer,
with the held-out-voice protocol: the probe trains on the train split's utterances of all voices but
`--held_out_voices` and is scored on every utterance of those voices (unseen voices) and on the
other voices' valid split (held-out sentences), beside the same architecture at random init and
80-dim log-mel (`w2v_jax.research.probes`). Writes `metrics.json`, `probes.md` (the table, naming
each model's best layer), `phone_probe.png` (accuracy against depth) and `codebook_usage.png` into
`--output` and prints the table. All logic:
`w2v_jax.research.probes.evaluate_pretrained_checkpoint`.

A fine-tuned (CTC) checkpoint (a fine-tuning workdir: its best model unless `--step`) is evaluated
by its error rates instead: WER and CER (`--labels=ltr`) or PER (`--labels=phn`) on `--manifest`
(default: the embedded corpus's valid split), written to `--output`/metrics.json
(`w2v_jax.asr.evaluator.evaluate_finetuned_checkpoint`). Unreadable files are reported on stderr,
left out of the error rates, and counted in the exit status, as `transcribe` does (`--strict`: stop
at the first one). With `--lm` (and `--lexicon` for a word
LM) it also decodes with beam search: greedy, beam search without the LM and with it, on the logits
of one forward pass, with each decoder's speed; several `--lm_weight` and `--word_score` values
sweep every pair, print the table and the best pair and draw `lm_sweep.png`
(`w2v_jax.asr.evaluator.sweep_lm_weights`):

    w2v-evaluate --checkpoint=runs/ft_mini --lm=w2v_jax/data/corpus/lm/train_3gram.arpa \
        --lexicon=w2v_jax/data/corpus/lm/train_3gram.lexicon.txt --lm_weight=0,0.5,1,2,3 --word_score=-1,0,1,2
"""

import json
import pathlib
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr.beam_search import BeamSearchDecoder
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.error_rates import METRICS
from w2v_jax.asr.evaluator import evaluate_finetuned_checkpoint, sweep_lm_weights
from w2v_jax.checkpoints.loading import load_model
from w2v_jax.cli.bad_files import BadFiles
from w2v_jax.cli.beam_search_flags import beam_search_options, define_beam_search_flags
from w2v_jax.cli.checkpoint_flags import define_checkpoint_flags
from w2v_jax.cli.launching import launch
from w2v_jax.cli.probe_flags import define_probe_flags
from w2v_jax.cli.run_faults import run_faults_exit
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import AudioError
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.research import plotting, probes


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        **define_checkpoint_flags(fv),
        manifest=flags.DEFINE_string(
            "manifest", None, "Validation manifest (default: embedded corpus valid split).", flag_values=fv
        ),
        probe_train_manifest=flags.DEFINE_string(
            "probe_train_manifest", None, "Probe training manifest (default: corpus train).", flag_values=fv
        ),
        metadata=flags.DEFINE_string(
            "metadata", None, "metadata.jsonl with alignments (default: beside the manifest).", flag_values=fv
        ),
        features=flags.DEFINE_enum(
            "features",
            "layers",
            probes.FEATURE_KINDS,
            "Which features are probed: every layer, or one set.",
            flag_values=fv,
        ),
        baselines=flags.DEFINE_bool(
            "baselines", True, "Also probe a random-init model and log-mel features.", flag_values=fv
        ),
        output=flags.DEFINE_string("output", None, "Output folder (default: CHECKPOINT/eval).", flag_values=fv),
        seed=flags.DEFINE_integer(
            "seed", 0, "Masks/distractors of the objective and the random-init weights.", flag_values=fv
        ),
        max_utterances=flags.DEFINE_integer(
            "max_utterances",
            None,
            "Use the first N utterances of the objective's set and of each probe set.",
            flag_values=fv,
        ),
        **define_probe_flags(fv),
        labels=flags.DEFINE_enum(
            "labels", "ltr", sorted(METRICS), "CTC checkpoints: letter or phone labels.", flag_values=fv
        ),
        **define_beam_search_flags(fv, sweep=True),
        strict=flags.DEFINE_bool(
            "strict", False, "CTC checkpoints: stop at the first unreadable file.", flag_values=fv
        ),
    )


def evaluate_ctc(args: SimpleNamespace) -> None:
    """Error rates of a fine-tuned checkpoint (module docstring)."""
    manifest = args.manifest.value or str(default_manifest("valid"))
    output = pathlib.Path(args.output.value or pathlib.Path(args.checkpoint.value) / "eval")
    if args.lm.value is not None:
        evaluate_with_lm(args, manifest, output)
        return
    bad = BadFiles()
    try:
        record = evaluate_finetuned_checkpoint(
            args.checkpoint.value,
            manifest,
            args.labels.value,
            step=args.step.value,
            on_bad_file=None if args.strict.value else bad.report,
        )
    except AudioError as error:  # --strict: the first unreadable file, one line
        raise SystemExit(str(error)) from None
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"wrote {output}/metrics.json")
    bad.exit_if_any()


def evaluate_with_lm(args: SimpleNamespace, manifest: str, output: pathlib.Path) -> None:
    """Greedy, beam search without and with the LM at every (--lm_weight, --word_score) pair."""
    try:
        lm_weights = [float(a) for a in args.lm_weight.value]
        word_scores = [float(b) for b in args.word_score.value]
    except ValueError as error:
        raise SystemExit(f"--lm_weight and --word_score take comma-separated numbers: {error}") from None
    separator = SEPARATORS[args.labels.value]

    def with_lm(vocabulary, lm_weight, word_score):
        options = beam_search_options(args, lm_weight, word_score)
        return BeamSearchDecoder(vocabulary, args.lm.value, args.lexicon.value, options, separator)

    def without_lm(vocabulary):
        return BeamSearchDecoder(vocabulary, None, None, beam_search_options(args, 0.0, 0.0), separator)

    try:
        record = sweep_lm_weights(
            args.checkpoint.value,
            manifest,
            with_lm,
            lm_weights,
            word_scores,
            args.labels.value,
            step=args.step.value,
            extra_decoders={"beam, no LM": without_lm},
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    output.mkdir(parents=True, exist_ok=True)
    (output / "lm_metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    metrics = METRICS[args.labels.value]
    print(f"{'decoder':<24}" + "".join(f"{m:>8}" for m in metrics) + f"{'utt/s':>8}{'RTF':>8}")
    for name, values in record["decoders"].items():
        row = "".join(f"{values[m]:>8.3f}" for m in metrics)
        print(f"{name:<24}{row}{values['utterances_per_second']:>8.2f}{values['real_time_factor']:>8.3f}")
    best = record["best"]
    pair = f"--lm_weight={best['lm_weight']:g} --word_score={best['word_score']:g}"
    print(f"best: {pair} ({metrics[0]} {best[metrics[0]]:.3f})")
    print(f"{record['unknown_symbols']} label symbols outside the model's vocabulary (scored as <unk>)")
    written = [output / "lm_metrics.json"]
    if len(lm_weights) * len(word_scores) > 1:
        plotting.plot_lm_sweep(record["grid"], metrics[0], output / "lm_sweep.png")
        written.append(output / "lm_sweep.png")
    print("wrote " + ", ".join(map(str, written)))


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with run_faults_exit(args.output.value or args.checkpoint.value):
        if isinstance(load_model(args.checkpoint.value, args.step.value), Wav2Vec2ForCTC):
            evaluate_ctc(args)
            return
        record, table, output = probes.evaluate_pretrained_checkpoint(
            args.checkpoint.value,
            args.output.value,
            step=args.step.value,
            manifest=args.manifest.value,
            probe_train_manifest=args.probe_train_manifest.value,
            metadata=args.metadata.value,
            kind=args.features.value,
            baselines=args.baselines.value,
            seed=args.seed.value,
            max_utterances=args.max_utterances.value,
            held_out_voices=args.held_out_voices.value,
            probe_steps=args.probe_steps.value,
        )
    print(json.dumps(record["validation"], indent=2))
    print(table)
    print(f"wrote {output}/metrics.json, probes.md, phone_probe.png, codebook_usage.png")


def run() -> None:
    """The `w2v-evaluate` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
