"""Continued pretraining in miniature (docs/continued_pretraining.md): does continuing a model's
pretraining on unlabelled speech of a language it has not heard help fine-tuning on a few labelled
minutes of that language, at the same number of updates in all?

    python -m tools.make_new_language_corpus --out /tmp/dutch
    python -m tools.continued_pretraining --data=/tmp/dutch --out=/tmp/continued

- (A) `pretrain.py:tiny` on the embedded corpus (en, fr, de, es, it), `PRETRAINING_UPDATES` updates,
  seed 0 (or `--pretrained`, an existing run of it);
- (B) per seed: A continued (`config.init`) on the new language's unlabelled speech for
  `CONTINUED_UPDATES` updates, then `finetune.py:tiny` from it on the labelled minutes for
  `FINETUNING_UPDATES` updates;
- (C) per seed: `finetune.py:tiny` from A on the same labelled minutes for `CONTINUED_UPDATES +
  FINETUNING_UPDATES` updates (the same number of updates after A as B in all).

Each fine-tuned model's CER on the held-out sentences at its last update (no best-checkpoint choice
on the held-out set) goes to `OUT/results.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import json
import logging
import pathlib

import ml_collections

from w2v_jax.asr.task import FineTuningTask
from w2v_jax.configs import finetune as finetune_configs
from w2v_jax.configs import pretrain as pretrain_configs
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.research.sweep import Spread
from w2v_jax.training import metrics, trainer

logger = logging.getLogger(__name__)

PRETRAINING_UPDATES = 300  # pretrain.py:tiny as it is
CONTINUED_UPDATES = 100
FINETUNING_UPDATES = 200
# Fine-tuning: batches of 4 (the labelled set is 32 utterances) and the Transformer frozen for the
# same first updates in both arms, so that each leaves CTC's all-blank start on the same footing.
FINETUNING_BATCH_SIZE = 4
FROZEN_UPDATES = 50
SEEDS = (0, 1, 2)


def continued_config(pretrained: pathlib.Path, data: pathlib.Path, seed: int) -> ml_collections.ConfigDict:
    """(B)'s continuation: tiny's pretraining recipe from A on the new language's unlabelled speech,
    with a short warm-up, half tiny's peak learning rate (a trained model's weights, not random ones)."""
    config = pretrain_configs.get_config("tiny")
    config.init = str(pretrained)
    config.train.seed = seed
    config.train.num_steps = CONTINUED_UPDATES
    config.train.warmup_steps = CONTINUED_UPDATES // 10
    config.train.learning_rate = 1e-3
    config.train.checkpoint_every = config.train.eval_every = CONTINUED_UPDATES
    config.train.plot = False
    config.data.train_manifest = str(data / "unlabelled.tsv")
    config.data.valid_manifest = str(data / "heldout.tsv")
    return config


def finetuning_config(init: pathlib.Path, data: pathlib.Path, seed: int, num_steps: int) -> ml_collections.ConfigDict:
    """`finetune.py:tiny` from `init` on the labelled minutes (`FINETUNING_BATCH_SIZE`,
    `FROZEN_UPDATES`), validated on the held-out sentences at the last update only."""
    config = finetune_configs.get_config("tiny")
    config.init = str(init)
    config.train.seed = seed
    config.train.num_steps = num_steps
    config.train.batch_size = FINETUNING_BATCH_SIZE
    config.train.freeze_finetune_updates = FROZEN_UPDATES
    config.train.checkpoint_every = config.train.eval_every = num_steps
    config.train.plot = False
    config.data.train_manifest = str(data / "labelled.tsv")
    config.data.valid_manifest = str(data / "heldout.tsv")
    return config


def _final_cer(workdir: pathlib.Path) -> float:
    (record,) = [r for r in metrics.read_metrics(workdir / metrics.METRICS_FILE) if "valid_cer" in r][-1:]
    return float(record["valid_cer"])


def run_experiment(data: pathlib.Path, out: pathlib.Path, pretrained: pathlib.Path | None) -> dict:
    """Runs (or resumes) every run of the module docstring under `out`; returns the results."""
    if pretrained is None:
        pretrained = out / "A_pretrained"
        trainer.train_and_evaluate(pretrain_configs.get_config("tiny"), str(pretrained), PretrainingTask())
    results: dict = {"pretrained": str(pretrained), "seeds": {}}
    for seed in SEEDS:
        continued = out / f"B_continued_seed{seed}"
        trainer.train_and_evaluate(continued_config(pretrained, data, seed), str(continued), PretrainingTask())
        runs = {
            "B_continued_then_finetuned": (continued, FINETUNING_UPDATES),
            "C_finetuned": (pretrained, CONTINUED_UPDATES + FINETUNING_UPDATES),
        }
        cer = {}
        for name, (init, num_steps) in runs.items():
            workdir = out / f"{name}_seed{seed}"
            trainer.train_and_evaluate(finetuning_config(init, data, seed, num_steps), str(workdir), FineTuningTask())
            cer[name] = _final_cer(workdir)
        results["seeds"][seed] = cer
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def results_table(results: dict) -> str:
    """A Markdown table: held-out CER per arm, per seed and mean [min, max]."""
    arms = ("B_continued_then_finetuned", "C_finetuned")
    seeds = sorted(results["seeds"], key=int)
    lines = [
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [min, max] |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for arm in arms:
        values = [results["seeds"][s][arm] for s in seeds]
        lines.append(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {Spread.of(values)} |")
    return "\n".join(lines)
