"""Validation inside pretraining: fixed batches (each utterance once, crop or pad) and the evaluator
against the model's own outputs. The trainer's `valid_*` record keys, and that they replay exactly
after a resume, are checked end to end in tests/e2e/test_pretrain.py."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from w2v_jax import sharding
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.data import bucket_lengths
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.evaluator import PretrainingEvaluator, validation_batches
from w2v_jax.pretraining.task import pretraining_hyperparams
from w2v_jax.training import train_step

TINY = Wav2Vec2Config.preset("tiny", hidden_dropout=0.0, layerdrop=0.0)


def _waveforms(lengths):
    """Utterance i is the constant i + 1, so a row tells which utterance it holds."""
    return [np.full(n, i + 1, np.float32) for i, n in enumerate(lengths)]


LENGTHS = [5000, 9000, 400, 7000, 16000, 12000, 6500, 8000, 3000]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_every_usable_utterance_is_in_exactly_one_row(norm):
    config = dataclasses.replace(TINY, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    batches, skipped = validation_batches(
        _waveforms(LENGTHS), config, batch_size=3, max_sample_size=10000, min_sample_size=4000, num_buckets=4
    )
    buckets = bucket_lengths(4000, 10000, 4, pad=norm == "layer").tolist()
    assert skipped == 2  # 400 and 3000 samples are under min_sample_size
    seen = []
    for batch in batches:
        width = batch.input_values.shape[1]
        assert width in buckets and batch.input_values.shape[0] == 3
        for row, mask in zip(batch.input_values, batch.attention_mask):
            if not mask.any():
                continue  # filler row of the short last batch
            index = int(row[0]) - 1
            seen.append(index)
            kept = int(mask.sum())
            np.testing.assert_array_equal(row[:kept], index + 1)
            np.testing.assert_array_equal(row[kept:], 0.0)
            if norm == "group":
                assert kept == width <= LENGTHS[index]  # cropped to the batch's shortest
            else:
                assert kept == min(LENGTHS[index], 10000) <= width  # padded, long ones cropped
    assert sorted(seen) == [i for i, n in enumerate(LENGTHS) if n >= 4000]


def test_masks_and_distractors_are_fixed_and_stay_in_real_frames():
    config = dataclasses.replace(TINY, feat_extract_norm="layer", do_stable_layer_norm=True)
    kwargs = dict(batch_size=4, max_sample_size=16000, min_sample_size=4000, num_buckets=3, seed=7)
    first, _ = validation_batches(_waveforms(LENGTHS), config, **kwargs)
    again, _ = validation_batches(_waveforms(LENGTHS), config, **kwargs)
    other, _ = validation_batches(_waveforms(LENGTHS), config, **{**kwargs, "seed": 8})
    model = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0)))  # shapes only
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.mask_time_indices, b.mask_time_indices)
        np.testing.assert_array_equal(a.negative_indices, b.negative_indices)
        frames = model.num_frames(a.attention_mask.sum(axis=1))
        outside = np.arange(a.mask_time_indices.shape[1])[None, :] >= frames[:, None]
        assert not (a.mask_time_indices & outside).any()
        assert a.mask_time_indices.any()
    assert any((a.mask_time_indices != c.mask_time_indices).any() for a, c in zip(first, other))


def test_evaluator_matches_the_model_run_batch_by_batch():
    rng = np.random.default_rng(0)
    lengths = (6000, 7000, 9000, 6400, 12000, 6000, 8000, 9500, 11000, 7600)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    batches, _ = validation_batches(  # 8 rows: one per simulated device (conftest)
        waveforms, TINY, batch_size=8, max_sample_size=12000, min_sample_size=6000, num_buckets=2
    )
    mesh = sharding.make_mesh(-1, 1)
    optimizer, _ = pretraining_hyperparams(pretrain_config.get_config("tiny").train)
    graphdef, state, shardings = train_step.create_train_state(
        TINY, optimizer, model_class=Wav2Vec2ForPreTraining, seed=3, mesh=mesh
    )
    evaluator = PretrainingEvaluator(graphdef, batches, mesh, shardings.params, shardings.model_state)
    got = evaluator(state, 0)

    model = nnx.merge(graphdef, state.params, state.model_state)
    assert isinstance(model, Wav2Vec2ForPreTraining)
    loss = correct = chance = masked = 0.0
    perplexities = []
    forward = nnx.jit(
        lambda m, x, a, masks, negatives: m(
            x, attention_mask=a, mask_time_indices=masks, negative_indices=negatives, deterministic=True
        )
    )
    for b in batches:
        out = forward(model, b.input_values, b.attention_mask, b.mask_time_indices, b.negative_indices)
        loss += float(out.loss)
        correct += int(out.num_correct)
        chance += float(out.chance_correct)
        masked += int(out.num_masked)
        perplexities.append(float(out.codevector_perplexity))
    # float32 sums of the same per-batch values in another order (sharded vs not): ~1e-7 relative.
    assert got["loss"] == pytest.approx(loss / masked, rel=1e-5)
    assert got["accuracy"] == correct / masked and got["num_masked"] == masked
    assert got["chance_accuracy"] == pytest.approx(chance / masked, rel=1e-5)
    assert got["code_perplexity"] == pytest.approx(np.mean(perplexities), rel=1e-5)
    assert evaluator(state, 1) == got  # fixed masks and distractors: the same parameters, the same values
    assert evaluator.num_compiles == len({b.input_values.shape for b in batches})
