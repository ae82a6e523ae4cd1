"""Tests of w2v_jax.research.benchmark and its launcher (fields and their consistency, never timings)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.support import HANG_TIMEOUT
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import finetune as finetune_configs
from w2v_jax.configs import pretrain as pretrain_configs
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import benchmark
from w2v_jax.training import compute, host_memory, train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\[[^\]]*\]|'[^']*'|\S+)", line))


def test_step_timings_statistics_match_numpy():
    timings = benchmark.StepTimings(
        framework="w2v_jax",
        device="cpu",
        step_seconds=[0.5, 0.2, 0.4, 0.3, 0.1],
        audio_seconds_per_step=16.0,
        flops_per_step=3e9,
        peak_flops_per_second=5e10,
        compile_seconds=1.0,
        memory={"xla_temp": 2**20},
        memory_source="test",
        minor_faults=[9, 1, 5, 3, 7],
    )
    median = float(np.median(timings.step_seconds))
    np.testing.assert_allclose(timings.median_step_seconds, median, rtol=1e-12)
    np.testing.assert_allclose(timings.audio_seconds_per_second, 16.0 / median, rtol=1e-12)
    np.testing.assert_allclose(timings.mfu, 3e9 / median / 5e10, rtol=1e-12)
    fields = _fields(timings.line())
    assert fields["median_step_s"] == "0.3000"
    assert fields["xla_temp_mib"] == "1.0"
    assert fields["minor_faults_per_step"] == "5"


@pytest.mark.parametrize(
    "overrides, message",
    [({"batch_size": 0}, "batch size"), ({"steps": 0}, "steps"), ({"precision": "float16"}, "precision")],
)
def test_settings_reject_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        benchmark.BenchmarkSettings(**overrides)


def test_matmul_peak_is_positive_and_finite():
    peak = compute.matmul_peak_flops(jax.devices()[0], jnp.float32, size=128, repeats=2)
    assert np.isfinite(peak) and peak > 0


def test_step_masks_are_the_ones_the_model_draws():
    """The reference is fed what our step's model samples from `train_step.model_key(key, step, 0)`."""
    config = benchmark.benchmark_config(Wav2Vec2Config.preset("tiny"))
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    waveforms = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16000), dtype=np.float32))
    key = jax.random.key(3)
    step = 7
    forward = nnx.jit(lambda m, x, k: m(x, deterministic=False, key=k))
    out = forward(model, waveforms, train_step.model_key(key, step, 0))
    mask, negatives = benchmark.step_masks(config, key, step, 2, model.num_frames(16000))
    np.testing.assert_array_equal(mask, np.asarray(out.mask_time_indices))
    assert negatives.shape == (*mask.shape, config.num_negatives)
    assert int(out.num_masked) == int(mask.sum())


@pytest.mark.slow
def test_launcher_prints_sane_fields_for_both_frameworks(env):
    """The real launcher on the tiny config, a 2 x 1 s batch and one timed step after one warm-up."""
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--config=experiments/configs/pretrain.py:tiny",
        "--batch=2",
        "--seconds=1",
        "--timed_steps=1",
        "--warmup_steps=1",
        "--vs_pytorch",
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    header = _fields(lines[0])
    assert header["config"] == "tiny" and header["batch"] == "2" and float(header["matmul_peak_flops_per_s"]) > 0
    assert header["host_malloc"] == ("reuse" if host_memory.supported() else "system")
    ours = _fields(next(line for line in lines if line.startswith("w2v_jax:")))
    reference = _fields(next(line for line in lines if line.startswith("pytorch:")))
    for fields in (ours, reference):
        median = float(fields["median_step_s"])
        assert median > 0
        np.testing.assert_allclose(float(fields["audio_s_per_s"]), 2.0 / median, rtol=1e-2)
        assert float(fields["flops_per_step"]) > 0
        np.testing.assert_allclose(
            float(fields["achieved_flops_per_s"]), float(fields["flops_per_step"]) / median, rtol=1e-2
        )
        assert 0 < float(fields["mfu"]) < 1
        assert float(fields["peak_rss_mib"]) > 0
        assert int(fields["minor_faults_per_step"]) >= 0
    # Both ran the same model: the same FLOP count, XLA's count of our step.
    assert ours["flops_per_step"] == reference["flops_per_step"]
    assert float(ours["compile_s"]) > 0 and reference["compile_s"] == "none(eager)"
    assert float(ours["xla_temp_mib"]) > 0 and float(ours["xla_arguments_mib"]) > 0
    assert "same masks and distractors on both sides: True" in lines
    ratio = float(lines[-1].removeprefix("ratio="))
    assert lines[-1].startswith("ratio=")
    np.testing.assert_allclose(ratio, float(ours["audio_s_per_s"]) / float(reference["audio_s_per_s"]), rtol=2e-2)


@pytest.mark.slow
def test_finetuning_benchmark_times_the_ctc_step_against_transformers_ctc_model():
    """The fine-tune tiny config (dropout off, so both sides compute the same): our CTC train step and
    the twin's `Wav2Vec2ForCTC` step on the same batch, labels, weights and masks."""
    config = finetune_configs.get_config("tiny")
    with config.unlocked():
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout"):
            config.model[name] = 0.0
    settings = benchmark.BenchmarkSettings(batch_size=2, seconds=1.0, steps=1, warmup=1)
    task = benchmark.benchmark_task(config)
    assert task.name == "finetune" and isinstance(task.hparams.objective, CTCObjective)
    assert task.model_config.vocab_size == len(task.vocabulary) and task.model_config.layerdrop == 0.0
    batch = benchmark.make_batch(task, settings)
    labels = batch["labels"]
    # 15 letters per second of audio, none of them special tokens.
    assert labels.shape == (2, 15) and batch["attention_mask"].all()
    special = [task.vocabulary.token_to_id[token] for token in ("<pad>", "<s>", "</s>", "<unk>")]
    assert not np.isin(labels, special).any()

    result = benchmark.run_benchmark(config, settings, vs_pytorch=True)
    lines = result.lines()
    header = _fields(lines[0])
    assert (header["task"], header["labels"], header["vocab"]) == ("finetune", "15", str(len(task.vocabulary)))
    assert result.reference.flops_per_step == result.ours.flops_per_step > 0
    # Same weights, batch and masks, no dropout: the losses agree to float32 rounding (the CTC
    # model's parity bound, tests/test_ctc_model.py).
    np.testing.assert_allclose(result.first_losses["w2v_jax"], result.first_losses["pytorch"], rtol=5e-6)
    assert result.first_losses["w2v_jax"] > 0
    assert any(line.startswith("first step's loss per utterance:") for line in lines)
    np.testing.assert_allclose(float(lines[-1].removeprefix("ratio=")), result.ratio, rtol=1e-3)
    np.testing.assert_allclose(
        result.ratio, result.reference.median_step_seconds / result.ours.median_step_seconds, rtol=1e-12
    )


@pytest.mark.slow
def test_remat_memory_mode_prints_both_temp_sizes(env):
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--config=experiments/configs/pretrain.py:tiny",
        "--batch=2",
        "--seconds=1",
        "--remat_memory",
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()[-2:]
    assert [line.split(":")[0] for line in lines] == ["forward_backward", "train_step"]
    for line in lines:
        fields = _fields(line)
        no_remat, remat = float(fields["no_remat_mib"]), float(fields["remat_mib"])
        assert no_remat > 0 and remat > 0
        np.testing.assert_allclose(float(fields["reduction"].rstrip("x")), no_remat / remat, rtol=2e-2)


def test_model_remat_keeps_loss_and_gradients_and_saves_memory():
    """Rematerialisation (conv encoder + Transformer layers) changes memory, not numbers."""
    config = benchmark.benchmark_config(Wav2Vec2Config.preset("tiny"))
    waveforms = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16000), dtype=np.float32))
    key = jax.random.key(5)

    def compiled_grad(remat: bool):
        graphdef, params = nnx.split(Wav2Vec2ForPreTraining(config, remat=remat, rngs=nnx.Rngs(0)))

        def loss(p):
            return nnx.merge(graphdef, p)(waveforms, deterministic=False, key=key).loss

        return jax.jit(jax.value_and_grad(loss)).lower(params).compile(), params

    (plain, params), (remat, _) = compiled_grad(False), compiled_grad(True)
    plain_loss, plain_grads = plain(params)
    remat_loss, remat_grads = remat(params)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    # The loss is a sum over frames, so gradients are O(1): float32 reassociation leaves ~3e-6.
    chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-5)
    assert remat.memory_analysis().temp_size_in_bytes < plain.memory_analysis().temp_size_in_bytes


def test_fill_batch_scales_the_probe_linearly():
    config = pretrain_configs.get_config("tiny")
    settings = benchmark.BenchmarkSettings(batch_size=1, seconds=1.0)
    device = jax.devices()[0]
    task = benchmark.benchmark_task(config)
    probe, _ = benchmark.compile_train_step(task, dataclasses.replace(settings, batch_size=2), device)
    per_utterance = probe.memory.temp_size_in_bytes / 2
    capacity = benchmark.device_memory_bytes(device)
    # A fraction of the device that holds the arguments and 10.5 probe-sized utterances: batch 10.
    fraction = (probe.memory.argument_size_in_bytes + 10.5 * per_utterance) / capacity
    batch, line = benchmark.fill_batch(config, settings, fraction, probe_batch=2, device=device)
    assert batch == 10 and "fill_batch=10 " in line
    # The linear estimate holds within the headroom a fill fraction leaves: measured 1.2% over at
    # 5 times the probe batch (tiny, CPU); bound 10%.
    filled, _ = benchmark.compile_train_step(task, dataclasses.replace(settings, batch_size=batch), device)
    assert filled.memory.temp_size_in_bytes <= 1.1 * batch * per_utterance
    with pytest.raises(ValueError, match="fill fraction"):
        benchmark.fill_batch(config, settings, 1.5)
