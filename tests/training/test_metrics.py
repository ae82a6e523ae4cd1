"""Logging-window reductions: averages over finite steps, summed counts, ratios divided once."""

import io
import json
import logging
import math
import struct
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import tqdm
from tensorboardX.proto import event_pb2

from tests.support import HANG_TIMEOUT, NESTED_JSON, REPO
from w2v_jax.pretraining.task import METRIC_ROLES, PANELS, PretrainingTask
from w2v_jax.training import trainer
from w2v_jax.training.metrics import (
    METRICS_FILE,
    UNREADABLE_SUFFIX,
    MetricWriter,
    mean_metrics,
    plot_loss_curve,
    read_metrics,
    truncate_after,
)


def _step(loss, correct, masked, skipped=0):
    return {
        "loss": loss,
        "accuracy": correct / masked,
        "num_correct": correct,
        "num_masked": masked,
        "skipped_nonfinite": skipped,
    }


def test_ratio_is_summed_counts_divided_once_over_finite_steps():
    window = [_step(1.0, 9, 10), _step(3.0, 10, 100), _step(float("nan"), 5, 5, skipped=1)]
    out = mean_metrics(
        window,
        summed=("num_masked", "num_correct", "skipped_nonfinite"),
        ratios={"accuracy": ("num_correct", "num_masked")},
    )
    assert out["accuracy"] == pytest.approx(19 / 110)  # not the mean of 0.9 and 0.1
    assert out["loss"] == pytest.approx(2.0)
    assert out["num_masked"] == 115 and out["num_correct"] == 24 and out["skipped_nonfinite"] == 1


def test_steps_restored_without_counts_weigh_their_ratio_by_the_denominator():
    old = {k: v for k, v in _step(1.0, 9, 10).items() if k != "num_correct"}
    out = mean_metrics([old, _step(1.0, 10, 100)], ratios={"accuracy": ("num_correct", "num_masked")})
    assert out["accuracy"] == pytest.approx(19 / 110)
    only_skipped = mean_metrics([_step(1.0, 1, 2, skipped=1)], ratios={"accuracy": ("num_correct", "num_masked")})
    assert math.isnan(only_skipped["accuracy"])


def test_trainer_logs_accuracy_as_a_ratio_of_window_sums():
    window = [
        {**_step(1.0, 9, 10), "nonfinite_total": 0, "nonfinite_consecutive": 0},
        {**_step(2.0, 10, 100), "nonfinite_total": 0, "nonfinite_consecutive": 0},
    ]
    record = trainer._summarize(window, METRIC_ROLES)
    assert record["accuracy"] == pytest.approx(19 / 110)
    assert record["num_correct"] == 19 and record["num_masked"] == 110


def test_trainer_logs_chance_as_a_ratio_and_leaves_out_steps_restored_without_it():
    def chance_step(loss, correct, chance, masked):
        return {
            **_step(loss, correct, masked),
            "chance_correct": chance,
            "chance_accuracy": chance / masked,
            "nonfinite_total": 0,
            "nonfinite_consecutive": 0,
        }

    old = {**_step(1.0, 9, 10), "nonfinite_total": 0, "nonfinite_consecutive": 0}  # before chance_accuracy existed
    record = trainer._summarize([old, chance_step(1.0, 5, 2.5, 10), chance_step(2.0, 30, 40.0, 100)], METRIC_ROLES)
    assert record["chance_accuracy"] == pytest.approx(42.5 / 110)  # the old step's 10 frames left out
    assert record["accuracy"] == pytest.approx(44 / 120) and record["num_masked"] == 120
    assert "chance_accuracy" not in trainer._summarize([old], METRIC_ROLES)


def test_a_window_with_skipped_steps():
    # Skipped steps are left out of every average and ratio but counted; the counters come from
    # the window's last step.
    window = [
        {**_step(1.0, 9, 10), "nonfinite_total": 0, "nonfinite_consecutive": 0},
        {**_step(float("nan"), 0, 7, skipped=1), "nonfinite_total": 1, "nonfinite_consecutive": 1},
        {**_step(2.0, 3, 30), "nonfinite_total": 1, "nonfinite_consecutive": 0},
        {**_step(float("inf"), 0, 20, skipped=1), "nonfinite_total": 2, "nonfinite_consecutive": 1},
    ]
    record = trainer._summarize(window, METRIC_ROLES)
    assert record["loss"] == pytest.approx(1.5)
    assert record["accuracy"] == pytest.approx(12 / 40)
    assert record["skipped_nonfinite"] == 2
    assert record["nonfinite_total"] == 2 and record["nonfinite_consecutive"] == 1
    all_skipped = trainer._summarize(window[1:2], METRIC_ROLES)
    assert math.isnan(all_skipped["loss"]) and math.isnan(all_skipped["accuracy"])
    assert all_skipped["skipped_nonfinite"] == 1


def _tensorboard_events(folder):
    """(tag, value or text) of every summary in the folder's event files (TFRecord framing)."""

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        position = 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                out.append(
                    (value.tag, value.simple_value if value.HasField("simple_value") else value.tensor.string_val)
                )
    return out


def test_tensorboard_groups_tags_and_records_the_config(tmp_path):
    writer = MetricWriter(tmp_path, config='{"train": {"seed": 0}}')
    writer.write(2, {"loss": 1.5, "valid_loss": 2.5, "data_skipped_empty": 0})
    writer.close()
    events = _tensorboard_events(tmp_path)
    scalars = {tag: value for tag, value in events if isinstance(value, float)}
    assert scalars == {"train/loss": 1.5, "valid/loss": 2.5, "data/skipped_empty": 0.0}
    texts = [b"".join(value).decode() for tag, value in events if tag.startswith("config")]
    assert texts and '"seed": 0' in texts[0]
    assert read_metrics(tmp_path / METRICS_FILE) == [
        {"step": 2, "loss": 1.5, "valid_loss": 2.5, "data_skipped_empty": 0}
    ]


def test_the_writer_leaves_torch_unimported_and_a_later_import_works(tmp_path):
    """tensorboardX imports torch when it is installed; a launcher's writer must not pay that start-up
    (a fresh process: the test session has imported torch already)."""
    code = (
        "import sys; from w2v_jax.training.metrics import MetricWriter; "
        f"MetricWriter({str(tmp_path)!r}).write(1, {{'loss': 1.0}}); "
        "assert 'torch' not in sys.modules, 'torch imported'; import torch; torch.zeros(1)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == [1]


def test_loss_curve_draws_the_validation_values_beside_the_training_ones(tmp_path, monkeypatch):
    records = [
        {"step": s, "loss": 3.0 - s / 10, "accuracy": 0.2, "chance_accuracy": 0.1, "code_perplexity": 4.0}
        for s in range(1, 5)
    ]
    for r in records[1::2]:
        r.update(valid_loss=3.1, valid_accuracy=0.25, valid_code_perplexity=3.5)

    drawn = []
    real_savefig = plt.Figure.savefig

    def capture(fig, path, **kwargs):
        drawn.extend([[tuple(line.get_xdata()) for line in ax.get_lines()] for ax in fig.axes])
        real_savefig(fig, path, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    plot_loss_curve(records, tmp_path / "curve.png", PANELS)
    # Per panel: train at every step, valid where taken; the accuracy's chance level at every step.
    assert drawn == [[(1, 2, 3, 4), (2, 4)], [(1, 2, 3, 4), (2, 4), (1, 2, 3, 4)], [(1, 2, 3, 4), (2, 4)]]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_end_of_run_summary_is_a_few_readable_lines():
    summary = {
        "step": 300,
        "num_steps": 300,
        "checkpoint_steps": [200, 300],
        "num_compiles": 1,
        "compile_seconds": 21.04,
        "eval_seconds": 3.5,
        "data": "input files: 160 of 160 seen",
        "last_logged": {"step": 300, "loss": 2.34567, "accuracy": 0.4, "code_perplexity": None},
        "last_valid": {"step": 300, "loss": 2.5, "accuracy": 0.375, "code_perplexity": 6.123},
    }
    assert trainer.format_summary(summary, "runs/tiny", PretrainingTask()).splitlines() == [
        "finished at step 300 of 300 in runs/tiny",
        "  train (step 300): loss 2.3457, accuracy 0.400, code perplexity n/a",
        "  valid (step 300): loss 2.5000, accuracy 0.375, code perplexity 6.12",
        "  checkpoints: 200, 300",
        "  compiles: 1 train step (21.0 s); validation 3.5 s",
        "  data: input files: 160 of 160 seen",
    ]
    stopped = trainer.format_summary({**summary, "step": 120, "last_valid": {}}, "w", PretrainingTask()).splitlines()
    assert stopped[0] == "stopped at step 120 of 300 in w" and not any(line.startswith("  valid") for line in stopped)
    counted = {**summary["last_logged"], "audio_hours_seen": 0.5, "flops_seen": 1.25e15, "mfu": 0.4123}
    lines = trainer.format_summary({**summary, "last_logged": counted}, "w", PretrainingTask()).splitlines()
    assert lines[-2] == "  compute: 0.5 hours of audio seen, 1.25e+15 model FLOPs, MFU 41.2% in the last window"


def test_eta_leaves_out_compiles_and_evaluations():

    bar = tqdm.tqdm(total=10, smoothing=0, file=io.StringIO())
    bar.start_t -= 60.0  # the first step finished 60 s after the start, 59 s of it compiling
    bar.update(1)
    trainer._exclude_from_eta(bar, 59.0)
    meter = bar.format_dict
    remaining = (meter["total"] - meter["n"]) * meter["elapsed"] / meter["n"]
    assert 8.0 < remaining < 20.0  # ~9 steps of ~1 s, not 9 x 60 s
    bar.close()


def test_unreadable_lines_are_counted_named_and_kept_aside_on_resume(tmp_path, caplog):
    path = tmp_path / METRICS_FILE
    good = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    lines = [json.dumps(good[0]), json.dumps(good[1]), "\x00\x00garbage", '["not", "a record"]', json.dumps(good[2])]
    lines += [json.dumps(good[3]), '{"step": 5, "lo']  # the last line torn by a kill mid-write
    path.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="w2v_jax.training.metrics"):
        records = read_metrics(path)
    assert records == good and records.unreadable == [3, 4, 7]
    assert f"{path}: 3 unreadable line(s) left out (line 3, 4, 7;" in caplog.text
    # A resume drops the records after its checkpoint and keeps the unreadable lines as written.
    truncate_after(path, 2)
    assert read_metrics(path) == good[:2] and read_metrics(path).unreadable == []
    aside = (tmp_path / (METRICS_FILE + UNREADABLE_SUFFIX)).read_text().splitlines()
    assert aside == [lines[2], lines[3], lines[6]]


def test_a_line_nested_too_deep_to_parse_or_of_another_type_is_unreadable_like_any_other(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text(f'{{"step": 1}}\n{NESTED_JSON}\n["step"]\n"step"\n{{"step": 2}}\n')
    records = read_metrics(path)
    assert records == [{"step": 1}, {"step": 2}] and records.unreadable == [2, 3, 4]
