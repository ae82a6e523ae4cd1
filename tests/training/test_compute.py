"""What a run's compute amounts to (w2v_jax.training.compute and the loop's records): XLA's FLOPs of an
update against analytic counts, the peak table, and the records' hours seen, FLOPs and MFU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.image import imread

from w2v_jax import sharding
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.pretraining.task import PANELS, PretrainingTask
from w2v_jax.training import compute, metrics, train_step, trainer


def test_a_matmul_counts_two_flops_per_multiply_add():
    w, x = jnp.ones((128, 32)), jnp.ones((64, 128))
    assert compute.update_flops(jnp.dot, 1, x, w) == 2 * 64 * 128 * 32


def test_an_accumulated_update_counts_every_micro_batch():
    # XLA counts a scan's body once: four micro-batches scanned read as one. The count of an
    # update of four micro-batches is four times one micro-batch's update.
    w = jnp.ones((128, 32))

    def scanned(w, x):
        return jax.lax.scan(lambda c, xi: (c + xi @ w, None), jnp.zeros((16, 32)), x)[0]

    x = jnp.ones((4, 16, 128))
    one_pass = jax.jit(scanned).lower(w, x).cost_analysis()["flops"]
    assert one_pass < 2 * 64 * 128 * 32 / 2  # the body once, not four times
    micro = compute.micro_batch({"x": jnp.ones((64, 128))}, 4)["x"]
    assert micro.shape == (16, 128)
    assert compute.update_flops(jnp.dot, 4, micro, w) == 2 * 64 * 128 * 32


def _conv_flops(config, samples):
    flops, length, channels = 0, samples, 1
    for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        flops += 2 * channels * dim * kernel * length
        channels = dim
    return flops, length


def test_a_training_steps_flops_are_three_forwards_of_the_analytic_count():
    # Analytic forward multiply-adds of the tiny model: the conv stack, the projections and the
    # Transformer's matmuls (attention scores included); a training step is the forward and a
    # backward of twice its cost. Normalisations, activations, the quantizer's small matmuls and the
    # loss add to it (much, at the tiny width of 32), the first conv layer's missing input gradient
    # takes some off: the ratio is 1.27 on this config (XLA's count of a fixed program: no noise).
    # Counting the forward alone would read 0.42, each micro-batch twice 2.5.
    config = pretrain_config.get_config("tiny")
    config.model.num_hidden_layers = 1
    config.train.batch_size = 2
    task = PretrainingTask()
    model = task.model_config(config)
    rows, samples = 2, 16000
    conv, frames = _conv_flops(model, samples)
    d, ffn, t = model.hidden_size, model.intermediate_size, frames
    per_layer = 2 * t * (4 * d * d + 2 * d * ffn) + 2 * 2 * t * t * d
    forward = rows * (conv + 2 * t * model.conv_dim[-1] * d + model.num_hidden_layers * per_layer)
    optimizer, hparams = task.optimizer_and_hyperparams(config)
    mesh = sharding.make_mesh(-1, 1)
    graphdef, state, _ = train_step.create_train_state(
        model, optimizer, seed=0, mesh=mesh, model_class=task.model_class
    )
    step = functools.partial(train_step.train_step, graphdef=graphdef, optimizer=optimizer, hparams=hparams)
    batch = {
        "input_values": jax.ShapeDtypeStruct((rows, samples), jnp.float32),
        "attention_mask": jax.ShapeDtypeStruct((rows, samples), jnp.int32),
    }
    flops = compute.update_flops(step, 1, state, batch, jax.random.key(0))
    assert 0.9 <= flops / (3 * forward) <= 1.6, flops / (3 * forward)


def test_the_peak_table_matches_device_kinds_longest_name_first():
    assert compute.table_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert compute.table_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert compute.table_peak("NVIDIA H100 80GB HBM3", "float32") == 495e12
    assert compute.table_peak("TPU v5 lite", "bfloat16") == 197e12
    assert compute.table_peak("TPU v5p", "bfloat16") == 459e12
    assert compute.table_peak("Quantum Abacus 9000", "bfloat16") is None


class _Steps:
    compile_seconds = 0.0


def _window(restored, peak):
    steps = [{"skipped_nonfinite": 0, "loss": 1.0, "audio_samples": 32000, "model_flops": 1e9} for _ in range(3)]
    return trainer._LoggingWindow(
        steps[:restored], _Steps(), metrics.MetricRoles(), compute.Totals(7200.0, 5e9), peak
    ), steps


@pytest.mark.parametrize("peak", [4e9, None])
def test_a_record_counts_hours_and_flops_of_every_step_and_rates_of_the_timed_ones(peak):
    window, steps = _window(restored=1, peak=peak)
    window.steps.extend(steps[1:])
    record = window.record()
    # Totals: 2 h before, three steps of 2 s of real audio and 1 GFLOP each.
    assert record["audio_hours_seen"] == pytest.approx(2 + 3 * 2 / 3600)
    assert record["flops_seen"] == 5e9 + 3e9
    # Rates: the two steps run here (the restored one ran before the restart).
    assert record["flops_per_second"] / record["steps_per_second"] == pytest.approx(1e9)
    assert record["audio_seconds_per_second"] / record["steps_per_second"] == pytest.approx(32000 / SAMPLE_RATE)
    if peak:
        assert record["mfu"] == pytest.approx(record["flops_per_second"] / peak)
    else:
        assert "mfu" not in record
    assert "audio_samples" not in record and "model_flops" not in record


def test_curves_against_hours_and_flops(tmp_path):
    records = [
        {
            "step": 10 * i,
            "loss": 2.0 / i,
            "accuracy": 0.1 * i,
            "code_perplexity": 5.0,
            "audio_hours_seen": 0.5 * i,
            "flops_seen": 1e12 * i,
        }
        for i in range(1, 6)
    ]
    images = {}
    for x in metrics.X_AXES:
        metrics.plot_loss_curve(records, tmp_path / f"{x}.png", PANELS, x=x)
        images[x] = imread(tmp_path / f"{x}.png")
    # The same curves, other axis labels and ticks: the pictures differ.
    assert not np.array_equal(images["step"], images["audio_hours_seen"])
    assert not np.array_equal(images["audio_hours_seen"], images["flops_seen"])
    with pytest.raises(ValueError, match="drawn against one of"):
        metrics.plot_loss_curve(records, tmp_path / "x.png", PANELS, x="wall_time")
