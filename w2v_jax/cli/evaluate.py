"""Evaluates a checkpoint: pretraining objective on a validation split, codebook usage, phone probes.

    python -m experiments.evaluate --checkpoint=runs/tiny --output=runs/tiny/eval
    python -m experiments.evaluate --checkpoint=hf_folder --manifest=valid.tsv --probe_train_manifest=train.tsv

`--checkpoint` is a training workdir (newest checkpoint, or `--step`), a `convert.save_checkpoint`
folder or a transformers folder. Defaults: the embedded corpus' valid split (the objective's set)
and both splits for the linear frame phone probe of every layer, with the held-out-voice protocol:
the probe trains on the train split's utterances of all voices but `--held_out_voices` and is
scored on every utterance of those voices (unseen voices) and on the other voices' valid split
(held-out sentences), beside the same architecture at random init and 80-dim log-mel
(`w2v_jax.research.probes`). Writes `metrics.json`, `probes.md` (the table, naming each model's
best layer), `phone_probe.png` (accuracy against depth) and `codebook_usage.png` into `--output`
and prints the table. All logic: `w2v_jax.research.probes.evaluate_checkpoint`.

A fine-tuned (CTC) checkpoint (a fine-tuning workdir: its best model unless `--step`) is evaluated
by its error rates instead: WER and CER (`--labels=ltr`) or PER (`--labels=phn`) on `--manifest`
(default: the embedded corpus's valid split), written to `--output`/metrics.json
(`w2v_jax.finetuning.evaluate_checkpoint`).
"""

import json
import pathlib

from absl import app, flags

from w2v_jax import finetuning
from w2v_jax.checkpointing import load_model
from w2v_jax.cli import launch, run_faults_exit
from w2v_jax.data import default_manifest
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.research import probes

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir or checkpoint folder.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a training workdir (default: newest).")
_MANIFEST = flags.DEFINE_string("manifest", None, "Validation manifest (default: embedded corpus valid split).")
_PROBE_TRAIN = flags.DEFINE_string("probe_train_manifest", None, "Probe training manifest (default: corpus train).")
_METADATA = flags.DEFINE_string("metadata", None, "metadata.jsonl with alignments (default: beside the manifest).")
_FEATURES = flags.DEFINE_enum(
    "features", "layers", probes.FEATURE_KINDS, "Which features are probed: every layer, or one set."
)
_BASELINES = flags.DEFINE_bool("baselines", True, "Also probe a random-init model and log-mel features.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: CHECKPOINT/eval).")
_SEED = flags.DEFINE_integer("seed", 0, "Masks/distractors of the objective and the random-init weights.")
_MAX_UTTERANCES = flags.DEFINE_integer(
    "max_utterances", None, "Use the first N utterances of the objective's set and of each probe set."
)
_HELD_OUT_VOICES = flags.DEFINE_list(
    "held_out_voices", list(probes.DEFAULT_HELD_OUT_VOICES),
    "Voices (espeak-ng variants, e.g. m2) held out of the phone probe's training set; empty: none.",
)
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 300, "Adam iterations of each linear probe.")
_LABELS = flags.DEFINE_enum("labels", "ltr", sorted(finetuning.METRICS), "CTC checkpoints: letter or phone labels.")


def evaluate_ctc() -> None:
    """Error rates of a fine-tuned checkpoint (module docstring)."""
    manifest = _MANIFEST.value or str(default_manifest("valid"))
    record = finetuning.evaluate_checkpoint(_CHECKPOINT.value, manifest, _LABELS.value, step=_STEP.value)
    output = pathlib.Path(_OUTPUT.value or pathlib.Path(_CHECKPOINT.value) / "eval")
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"wrote {output}/metrics.json")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with run_faults_exit(_OUTPUT.value or _CHECKPOINT.value):
        if isinstance(load_model(_CHECKPOINT.value, _STEP.value), Wav2Vec2ForCTC):
            evaluate_ctc()
            return
        record, table, output = probes.evaluate_checkpoint(
            _CHECKPOINT.value,
            _OUTPUT.value,
            step=_STEP.value,
            manifest=_MANIFEST.value,
            probe_train_manifest=_PROBE_TRAIN.value,
            metadata=_METADATA.value,
            kind=_FEATURES.value,
            baselines=_BASELINES.value,
            seed=_SEED.value,
            max_utterances=_MAX_UTTERANCES.value,
            held_out_voices=_HELD_OUT_VOICES.value,
            probe_steps=_PROBE_STEPS.value,
        )
    print(json.dumps(record["validation"], indent=2))
    print(table)
    print(f"wrote {output}/metrics.json, probes.md, phone_probe.png, codebook_usage.png")


def run() -> None:
    """The `w2v-evaluate` command."""
    launch(main)


if __name__ == "__main__":
    run()
