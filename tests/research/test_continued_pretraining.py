"""w2v_jax/research/continued_pretraining.py: the miniature's runs are the configs it documents, at
the same number of updates in all, and its table reports each arm's seeds and spread."""

import pathlib

from w2v_jax.research import continued_pretraining as experiment


def test_both_arms_make_the_same_number_of_updates_after_the_pretrained_model():
    data, pretrained = pathlib.Path("/data/nl"), pathlib.Path("/runs/A")
    continued = experiment.continued_config(pretrained, data, seed=2)
    assert continued.init == "/runs/A" and continued.train.seed == 2
    assert continued.data.train_manifest == "/data/nl/unlabelled.tsv"
    b = experiment.finetuning_config(pathlib.Path("/runs/B"), data, 2, experiment.FINETUNING_UPDATES)
    c = experiment.finetuning_config(pretrained, data, 2, experiment.CONTINUED_UPDATES + experiment.FINETUNING_UPDATES)
    assert continued.train.num_steps + b.train.num_steps == c.train.num_steps
    for config in (b, c):
        assert config.data.train_manifest == "/data/nl/labelled.tsv"
        assert config.data.valid_manifest == "/data/nl/heldout.tsv"
        # Validated once, at the last update: no best-checkpoint choice on the held-out sentences.
        assert config.train.eval_every == config.train.num_steps
        assert config.train.freeze_finetune_updates == experiment.FROZEN_UPDATES
    assert (b.init, c.init) == ("/runs/B", "/runs/A")


def test_results_table_gives_every_seed_and_the_spread():
    results = {
        "seeds": {
            "0": {"B_continued_then_finetuned": 0.5, "C_finetuned": 0.75},
            "1": {"B_continued_then_finetuned": 0.25, "C_finetuned": 0.75},
        }
    }
    lines = experiment.results_table(results).splitlines()
    assert lines[0] == "| arm | seed 0 | seed 1 | mean [min, max] |"
    assert lines[2] == "| B_continued_then_finetuned | 0.500 | 0.250 | 0.375 [0.25, 0.5] |"
    assert lines[3] == "| C_finetuned | 0.750 | 0.750 | 0.75 |"
