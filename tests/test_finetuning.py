"""w2v_jax/finetuning.py: the CTC objective in the train step (freezing, normalisation), the model
config from a pretrained checkpoint, encoder initialisation, exact batched transcription, the
evaluator's best model, the fine-tune configs."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from w2v_jax.configs import finetune as finetune_configs
from w2v_jax import optim, sharding
from w2v_jax import train_step as train_lib
from w2v_jax.checkpointing import load_model
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.convert import load_vocabulary
from w2v_jax.finetuning import (
    BEST_DIR,
    BEST_FILE,
    CTCEvaluator,
    CTCObjective,
    SEPARATORS,
    error_rate_metrics,
    finetuned_model_config,
    transcribe,
    transcribe_waveforms,
    with_encoder,
)
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

VOCABULARY = Vocabulary.from_symbols("abcdefg'")
CONFIG = Wav2Vec2Config.preset("tiny", vocab_size=len(VOCABULARY), feature_grad_mult=0.0)
LAYER_CONFIG = CONFIG.replace(feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True)


def _batch(seed=0, lengths=(8000, 6400, 5600, 7200)):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    labels = np.full((len(lengths), 6), -100, np.int32)
    for row in range(len(lengths)):
        n = rng.integers(2, 7)
        labels[row, :n] = rng.integers(5, len(VOCABULARY), n)
    return {"input_values": (rng.standard_normal(mask.shape) * mask).astype(np.float32), "attention_mask": mask,
            "labels": labels}


def _setup(config, objective):
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer = optim.make_optimizer(eps=1e-8, weight_decay=0.0, max_grad_norm=0.0)
    graphdef, state, shardings = train_lib.create_train_state(config, optimizer, seed=0, mesh=mesh,
                                                              model_class=Wav2Vec2ForCTC)
    hparams = train_lib.StepHyperparams(learning_rate=lambda step: 1e-3, objective=objective)
    return graphdef, state, train_lib.TrainStep(graphdef, optimizer, hparams, mesh, shardings)


def _flat(params):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}


@pytest.fixture(scope="module")
def ctc_training():
    """One compiled CTC train step for the tests below (compiling it is most of their time): the
    layer-norm model with the attention mask, dropout and masks off, the Transformer frozen for the
    first 2 updates; its initial state on the host (the step donates the state it is given)."""
    config = LAYER_CONFIG.replace(mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                                  activation_dropout=0.0, feat_proj_dropout=0.0)
    graphdef, state, step = _setup(config, CTCObjective(freeze_finetune_updates=2, use_attention_mask=True))
    return graphdef, jax.device_get(state), step


def test_transformer_frozen_for_the_first_updates_feature_encoder_always(ctc_training):
    _, initial, step = ctc_training
    state = jax.tree.map(jnp.asarray, initial)
    key = jax.random.key(0)
    history = [_flat(state.params)]
    for _ in range(3):
        state, metrics = step(state, _batch(), key)
        history.append(_flat(state.params))
    assert [float(m) for m in (metrics["encoder_frozen"],)] == [0.0]
    for name in history[0]:
        changed = [not np.array_equal(a[name], b[name]) for a, b in zip(history, history[1:])]
        if name.startswith("lm_head"):
            assert changed == [True, True, True], name
        elif name.startswith("wav2vec2.feature_extractor"):
            assert changed == [False, False, False], name  # feature_grad_mult = 0
        elif name in ("wav2vec2.masked_spec_embed",) or "k_proj.bias" in name:
            continue  # no gradient / exactly-zero gradient
        else:
            assert changed == [False, False, True], name


def test_step_loss_is_the_sum_of_ctc_losses_over_utterances(ctc_training):
    """The logged loss is the summed CTC loss / utterances (fairseq's sentence_avg), the model's own
    "sum" loss with the attention mask (layer-norm model, eval mode: dropout and masks off)."""
    graphdef, initial, step = ctc_training
    state = jax.tree.map(jnp.asarray, initial)
    batch = _batch()
    # Jitted: one compile instead of one per operation in eager mode.
    expected = jax.jit(lambda params, model_state: nnx.merge(graphdef, params, model_state)(
        batch["input_values"], batch["attention_mask"], batch["labels"]))(state.params, state.model_state)
    _, metrics = step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected.loss) / 4, rtol=1e-5)
    assert float(metrics["num_label_tokens"]) == int(expected.num_label_tokens)
    assert float(metrics["num_utterances"]) == 4


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


@pytest.mark.parametrize("config", [CONFIG, LAYER_CONFIG], ids=["group", "layer"])
def test_batched_transcripts_equal_one_utterance_at_a_time(config):
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(3))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 300  # varied argmax per frame
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (4000, 7000, 4000, 5200, 9100)]
    batched = transcribe(model, waveforms, VOCABULARY, batch_size=2)
    alone = [transcribe(model, [w], VOCABULARY, batch_size=1)[0] for w in waveforms]
    assert batched == alone
    assert len(set(batched)) > 1 and all(batched)


def test_evaluator_keeps_the_best_model_and_replays_after_a_resume(tmp_path):
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(6000).astype(np.float32) for _ in range(3)]
    evaluator = CTCEvaluator(graphdef, LAYER_CONFIG, waveforms, ["ab", "c", "ab c"], VOCABULARY, "ltr",
                             batch_size=2, workdir=tmp_path, best_metric="cer")
    state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=rest, opt_state=None,
                                 nonfinite_total=None, nonfinite_consecutive=None)
    values = evaluator(state, 100)
    assert set(values) == {"wer", "cer"}
    best = json.loads((tmp_path / BEST_FILE).read_text())
    assert best["step"] == 100 and best["value"] == values["cer"] and len(best["history"]) == 1
    assert load_vocabulary(tmp_path / BEST_DIR) == VOCABULARY
    # A worse evaluation later keeps step 100; a resume replaying step 100 drops the later history.
    (tmp_path / BEST_FILE).write_text(json.dumps({**best, "history": best["history"] + [
        {"step": 200, "wer": 2.0, "cer": 2.0}]}))
    evaluator(state, 100)
    assert [h["step"] for h in json.loads((tmp_path / BEST_FILE).read_text())["history"]] == [100]
    with pytest.raises(ValueError, match="best_metric"):
        CTCEvaluator(graphdef, LAYER_CONFIG, waveforms, ["a"] * 3, VOCABULARY, "phn", batch_size=2,
                     workdir=tmp_path, best_metric="cer")


def test_phone_error_rate_counts_phones_not_strings():
    """Greedy transcripts of a phone model (logits spelling known phones) scored against .phn
    references: PER counts phone edits; concatenated phones would count one "word" per utterance."""
    phones = Vocabulary.from_symbols(["aɪ", "t", "s"])
    ids = [phones.token_to_id[p] for p in ("t", "aɪ", "s")]
    logits = np.full((1, 8, len(phones)), -5.0, np.float32)
    for frame, token in enumerate([ids[0], phones.pad_id, ids[1], ids[1], phones.pad_id, ids[2], ids[2], ids[0]]):
        logits[0, frame, token] = 5.0
    forward = lambda x, mask: jnp.asarray(logits)
    config = Wav2Vec2Config.preset("tiny", feat_extract_norm="layer", conv_bias=True)
    hypotheses = transcribe_waveforms(forward, [np.zeros(2560, np.float32)], phones, config, batch_size=1,
                                      num_frames=lambda n: n // 320, exact=False, separator=SEPARATORS["phn"])
    assert hypotheses == ["t aɪ s t"]
    # One insertion (s) against 3 reference phones; "taɪst" against "taɪt" would score 1.0.
    assert error_rate_metrics(["t aɪ t"], hypotheses, "phn") == {"per": pytest.approx(1 / 3)}


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
            num_steps, lr, freeze)
        assert model_config.feature_grad_mult == 0.0 and model_config.mask_feature_length == 64
    with pytest.raises(ValueError, match="unknown finetune config variant"):
        finetune_configs.get_config("base_1m")


def test_load_model_refuses_nothing_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)
