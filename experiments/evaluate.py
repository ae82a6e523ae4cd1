"""Evaluates a checkpoint: pretraining objective on a validation split, codebook usage, linear probes.

    python -m experiments.evaluate --checkpoint=runs/tiny --output=runs/tiny/eval
    python -m experiments.evaluate --checkpoint=hf_folder --manifest=valid.tsv --probe_train_manifest=train.tsv

`--checkpoint` is a training workdir (newest checkpoint, or `--step`), a `convert.save_checkpoint`
folder or a transformers folder. Defaults: the embedded corpus' valid split (objective and probe
test set) and train split (probe training set), with its `metadata.jsonl` alignments. Writes
`metrics.json`, `probes.md` and `codebook_usage.png` into `--output` and prints them.
"""

import dataclasses
import json
import pathlib

from absl import app, flags

from w2v_jax import plotting, probing
from w2v_jax.data import default_manifest

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir or checkpoint folder.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a training workdir (default: newest).")
_MANIFEST = flags.DEFINE_string("manifest", None, "Validation manifest (default: embedded corpus valid split).")
_PROBE_TRAIN = flags.DEFINE_string("probe_train_manifest", None, "Probe training manifest (default: corpus train).")
_METADATA = flags.DEFINE_string("metadata", None, "metadata.jsonl with alignments (default: beside the manifest).")
_FEATURES = flags.DEFINE_enum("features", "context", probing.FEATURE_KINDS, "Which features are probed.")
_BASELINES = flags.DEFINE_bool("baselines", True, "Also probe a random-init model and log-mel features.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: CHECKPOINT/eval).")
_SEED = flags.DEFINE_integer("seed", 0, "Masks/distractors of the objective and the random-init weights.")
_MAX_UTTERANCES = flags.DEFINE_integer("max_utterances", None, "Use the first N utterances of each split.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    valid_manifest = _MANIFEST.value or default_manifest("valid")
    train_manifest = _PROBE_TRAIN.value or default_manifest("train")
    metadata = probing.read_metadata(_METADATA.value) if _METADATA.value else None
    output = pathlib.Path(_OUTPUT.value or pathlib.Path(_CHECKPOINT.value) / "eval")
    output.mkdir(parents=True, exist_ok=True)

    model = probing.load_model(_CHECKPOINT.value, _STEP.value)
    train = probing.load_utterances(train_manifest, metadata, max_utterances=_MAX_UTTERANCES.value)
    test = probing.load_utterances(valid_manifest, metadata, max_utterances=_MAX_UTTERANCES.value)
    metrics, probes = probing.evaluate(
        model, train, test, name=pathlib.Path(_CHECKPOINT.value).name, kind=_FEATURES.value,
        baselines=_BASELINES.value, seed=_SEED.value,
    )
    table = probing.probe_table(probes)
    record = {
        "checkpoint": _CHECKPOINT.value,
        "validation": {k: v for k, v in dataclasses.asdict(metrics).items() if k != "codebook_usage"},
        "codebook_usage": metrics.codebook_usage.tolist(),
        "probes": [dataclasses.asdict(p) for p in probes],
    }
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    (output / "probes.md").write_text(table + "\n")
    plotting.plot_codebook_usage(metrics.codebook_usage, output / "codebook_usage.png")
    print(json.dumps(record["validation"], indent=2))
    print(table)
    print(f"wrote {output}/metrics.json, probes.md, codebook_usage.png")


if __name__ == "__main__":
    app.run(main)
