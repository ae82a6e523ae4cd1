"""w2v_jax/asr/task.py: the model config from a pretrained checkpoint, encoder initialisation, the
fine-tune configs, the detectors that watch a fine-tuning run (the all-blank CTC plateau)."""

import ml_collections
import numpy as np
import pytest
from flax import nnx

from tests.support.ctc import CONFIG, VOCABULARY
from tests.support.health import WINDOW, observe
from w2v_jax.asr.task import METRIC_ROLES, CTCAllBlank, FineTuningTask, finetuned_model_config, with_encoder
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import finetune as finetune_configs
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.training import optim, trainer


def _flat(params):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}


def test_model_config_keeps_the_checkpoints_architecture():
    section = finetune_configs.get_config("base_10m").model
    init = Wav2Vec2Config.preset("tiny", feat_extract_norm="layer", conv_bias=True)
    config = finetuned_model_config(section, VOCABULARY, init)
    assert (config.hidden_size, config.conv_dim, config.feat_extract_norm) == (32, (32,) * 7, "layer")
    assert (config.mask_feature_length, config.mask_feature_prob, config.layerdrop) == (64, 0.25, 0.1)
    assert config.vocab_size == len(VOCABULARY) and config.pad_token_id == VOCABULARY.pad_id
    assert config.feature_grad_mult == 0.0 and config.ctc_zero_infinity
    random_init = finetuned_model_config(section, VOCABULARY)
    assert random_init.hidden_size == 768
    bad = ml_collections.ConfigDict({**section.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="hiden_size"):
        finetuned_model_config(bad, VOCABULARY)


def test_pretrained_encoder_goes_into_the_ctc_model():
    pretrained = Wav2Vec2ForPreTraining(CONFIG, rngs=nnx.Rngs(5))
    model = Wav2Vec2ForCTC(CONFIG, rngs=nnx.Rngs(6))
    params = with_encoder(nnx.state(model, nnx.Param), nnx.state(pretrained.wav2vec2, nnx.Param))
    flat, source = _flat(params), _flat(nnx.state(pretrained, nnx.Param))
    for name, value in flat.items():
        if name.startswith("wav2vec2."):
            np.testing.assert_array_equal(value, source[name])
        else:
            np.testing.assert_array_equal(value, _flat(nnx.state(model, nnx.Param))[name])
    wider = Wav2Vec2ForPreTraining(CONFIG.replace(hidden_size=48, num_conv_pos_embedding_groups=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        with_encoder(nnx.state(model, nnx.Param), nnx.state(wider.wav2vec2, nnx.Param))


@pytest.mark.parametrize("variant", finetune_configs.VARIANTS)
def test_every_variant_builds_a_valid_model_config(variant):
    config = finetune_configs.get_config(variant)
    model_config = finetuned_model_config(config.model, VOCABULARY)
    assert model_config.vocab_size == len(VOCABULARY)
    assert config.train.lr_schedule == "tri_stage" and config.data.pad
    optim.schedule_from_train_config(config.train)(0)
    if variant in finetune_configs.RECIPES:
        num_steps, lr, freeze, *_ = finetune_configs.RECIPES[variant]
        assert (config.train.num_steps, config.train.learning_rate, config.train.freeze_finetune_updates) == (
            num_steps,
            lr,
            freeze,
        )
        assert model_config.feature_grad_mult == 0.0 and model_config.mask_feature_length == 64
    with pytest.raises(ValueError, match="unknown finetune config variant"):
        finetune_configs.get_config("base_1m")


def _blank_records():
    """Eight records 10 updates apart, the blank the argmax of 99.5% of the frames."""
    return [{"step": 10 * i, "loss": 50.0 - i, "blank_fraction": 0.995, "skipped_nonfinite": 0} for i in range(1, 9)]


def test_a_bucket_of_longer_utterances_is_no_divergence():
    # CTC's loss per utterance grows with its length: records alternate between buckets whose
    # utterances have 20 and 90 labels, at the same loss per label, the short bucket first.
    records = []
    for i in range(1, 31):
        labels = 20 if i < 10 or i % 2 else 90
        per_label = 1.0 - 0.01 * i
        records.append({"step": 10 * i, "loss": per_label * labels, "loss_per_token": per_label, "grad_norm": 1.0})
    config = finetune_configs.get_config("tiny")
    monitor, names = observe(FineTuningTask().detectors(config), records)
    assert names == [[]] * 30 and monitor.summary() == "no failure detected"
    # The loss per label doubling is still one.
    for record in records[20:]:
        record["loss_per_token"] *= 2.5
    names = observe(FineTuningTask().detectors(config), records)[1]
    assert names[20 + WINDOW - 1 :] == [["divergence"]] * (10 - WINDOW + 1)


def test_all_blank_ctc_fires_after_the_warmup_and_freeze_only():
    def names(warmup_steps, freeze_finetune_updates, records):
        config = finetune_configs.get_config("tiny")
        config.train.warmup_steps, config.train.freeze_finetune_updates = warmup_steps, freeze_finetune_updates
        return observe(FineTuningTask().detectors(config), records)[1]

    config = finetune_configs.get_config("tiny")
    detectors = FineTuningTask().detectors(config)
    assert [d.name for d in detectors] == ["grad_norm_collapse", "divergence", "ctc_all_blank"]
    # Records at steps 40, 50, 60 are the first window after the warmup and the freeze (step >= 40).
    assert names(20, 40, _blank_records()) == [[]] * 5 + [[CTCAllBlank.name]] * 3
    assert names(40, 0, _blank_records()) == [[]] * 5 + [[CTCAllBlank.name]] * 3
    assert names(50, 40, _blank_records()) == [[]] * 6 + [[CTCAllBlank.name]] * 2
    records = _blank_records()
    records[-1]["blank_fraction"] = 0.6
    assert names(20, 40, records)[-1] == []


def test_the_blank_fraction_is_logged_as_a_ratio_of_window_sums():
    def step(loss, blank, frames, skipped=0):
        return {
            "loss": loss,
            "blank_fraction": blank / frames,
            "num_blank_frames": blank,
            "num_frames": frames,
            "skipped_nonfinite": skipped,
            "nonfinite_total": skipped,
            "nonfinite_consecutive": skipped,
        }

    record = trainer._summarize([step(1.0, 9, 10), step(3.0, 10, 100), step(float("nan"), 7, 7, 1)], METRIC_ROLES)
    assert record["blank_fraction"] == pytest.approx(19 / 110)  # not the mean of 0.9 and 0.1
    assert record["num_frames"] == 117 and record["num_blank_frames"] == 26  # skipped steps counted
    assert record["loss"] == pytest.approx(2.0) and record["nonfinite_total"] == 1


def test_the_task_needs_prepare_before_its_model_config():
    with pytest.raises(RuntimeError, match="FineTuningTask.prepare has not run"):
        FineTuningTask().model_config(finetune_configs.get_config("base_10m"))
