"""w2v_jax/asr/objective.py: the CTC objective in the train step (freezing, normalisation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.support.ctc import LAYER_CONFIG, ctc_batch
from w2v_jax import sharding
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.training import optim, train_step


def _setup(config, objective):
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer = optim.make_optimizer(eps=1e-8, weight_decay=0.0, max_grad_norm=0.0)
    graphdef, state, shardings = train_step.create_train_state(
        config, optimizer, seed=0, mesh=mesh, model_class=Wav2Vec2ForCTC
    )
    hparams = train_step.StepHyperparams(learning_rate=lambda step: 1e-3, objective=objective)
    return graphdef, state, train_step.TrainStep(graphdef, optimizer, hparams, mesh, shardings)


def _flat(params):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}


@pytest.fixture(scope="module")
def ctc_training():
    """One compiled CTC train step for the tests below (compiling it is most of their time): the
    layer-norm model with the attention mask, dropout and masks off, the Transformer frozen for the
    first 2 updates; its initial state on the host (the step donates the state it is given)."""
    config = LAYER_CONFIG.replace(
        mask_time_prob=0.0,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
    )
    graphdef, state, step = _setup(config, CTCObjective(freeze_finetune_updates=2, use_attention_mask=True))
    return graphdef, jax.device_get(state), step


def test_transformer_frozen_for_the_first_updates_feature_encoder_always(ctc_training):
    _, initial, step = ctc_training
    state = jax.tree.map(jnp.asarray, initial)
    key = jax.random.key(0)
    history = [_flat(state.params)]
    for _ in range(3):
        state, metrics = step(state, ctc_batch(), key)
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
    batch = ctc_batch()
    # Jitted: one compile instead of one per operation in eager mode.
    expected = jax.jit(
        lambda params, model_state: nnx.merge(graphdef, params, model_state)(
            batch["input_values"], batch["attention_mask"], batch["labels"]
        )
    )(state.params, state.model_state)
    _, metrics = step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected.loss) / 4, rtol=1e-5)
    assert float(metrics["num_label_tokens"]) == int(expected.num_label_tokens)
    assert float(metrics["num_utterances"]) == 4
    # The all-blank measure: real frames whose argmax is the blank, over real frames (NumPy oracle).
    blank_id = nnx.merge(graphdef, state.params, state.model_state).config.pad_token_id
    logits, lengths = np.asarray(expected.logits), np.asarray(expected.logit_lengths)
    argmax = [np.argmax(logits[i, : lengths[i]], axis=-1) for i in range(len(lengths))]
    assert float(metrics["num_frames"]) == lengths.sum()
    assert float(metrics["num_blank_frames"]) == sum(int(np.sum(a == blank_id)) for a in argmax)
    np.testing.assert_allclose(float(metrics["blank_fraction"]), metrics["num_blank_frames"] / lengths.sum(), rtol=1e-6)


def test_the_objective_refuses_a_model_without_a_ctc_head():
    model = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(LAYER_CONFIG))
    with pytest.raises(TypeError, match="CTCObjective trains a Wav2Vec2ForCTC, got a Wav2Vec2ForPreTraining"):
        CTCObjective().loss(model, {}, jax.random.key(0), jnp.zeros((), jnp.int32))
