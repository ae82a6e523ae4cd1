"""w2v_jax/asr/task.py: the model config from a pretrained checkpoint, encoder initialisation, the
fine-tune configs."""

import ml_collections
import numpy as np
import pytest
from flax import nnx

from tests.support.ctc import CONFIG, VOCABULARY
from w2v_jax.asr.task import finetuned_model_config, with_encoder
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import finetune as finetune_configs
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.training import optim


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
