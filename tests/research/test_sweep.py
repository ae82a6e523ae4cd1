"""w2v_jax.research.sweep and experiments.sweep: grids as data, resume, commands, results."""

import csv
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import HANG_TIMEOUT
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import codebook_ablation
from w2v_jax.data.utterances import Utterance
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import probes, sweep

REPO = Path(__file__).resolve().parents[2]


def test_codebook_grid_is_the_issue_grid():
    config = codebook_ablation.get_config()
    assert config.variant == "mini"
    points = sweep.expand_grid(config.grid)
    assert len(points) == 16
    assert [
        (p["model.num_codevector_groups"], p["model.num_codevectors_per_group"], p["train.seed"]) for p in points
    ] == list(itertools.product((1, 2), (4, 16, 64, 320), (0, 1)))
    for point in points:  # every point is a valid model (codevector_dim divisible by G)
        model = sweep.apply_point(config, point).model
        assert model.codevector_dim % model.num_codevector_groups == 0


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcde"), st.lists(st.integers(), min_size=1, max_size=3), min_size=1, max_size=3)
)
def test_expand_grid_is_the_cartesian_product(axes):
    points = sweep.expand_grid({"train": axes})
    assert len(points) == int(np.prod([len(v) for v in axes.values()]))
    assert points == [dict(zip([f"train.{k}" for k in axes], combo)) for combo in itertools.product(*axes.values())]


def test_apply_point_sets_fields_and_rejects_unknown_ones():
    config = codebook_ablation.get_config()
    out = sweep.apply_point(config, {"model.num_codevector_groups": 4, "train.num_steps": 3})
    assert out.model.num_codevector_groups == 4 and out.train.num_steps == 3
    assert "grid" not in out and config.model.num_codevector_groups == 2  # the input is not modified
    with pytest.raises(ValueError, match="no field 'num_codebooks'"):
        sweep.apply_point(config, {"model.num_codebooks": 2})
    with pytest.raises(ValueError, match="no section 'optimizer'"):
        sweep.apply_point(config, {"optimizer.lr": 2})
    with pytest.raises(ValueError, match="empty"):
        sweep.expand_grid({})


def _fake_run(folder: Path, num_steps: int, loss: float) -> None:
    (folder / "checkpoints" / str(num_steps)).mkdir(parents=True)
    records = [
        {"step": step, "loss": loss + 1 / step, "accuracy": 0.5, "chance_accuracy": 0.3, "code_perplexity": 3.0}
        for step in range(1, num_steps + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_run_sweep_trains_each_point_once_and_resumes(tmp_path):
    config = codebook_ablation.get_config()
    config.train.num_steps = 5
    config.grid.model.num_codevectors_per_group = (80, 160)
    calls, killed = [], []

    def train_fn(point_config, workdir):
        model = point_config.model
        calls.append((model.num_codevector_groups, model.num_codevectors_per_group, point_config.train.seed))
        if len(calls) == 4 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # the sweep is killed during its 4th run
        _fake_run(Path(workdir), point_config.train.num_steps, 1.0)
        return {"step": point_config.train.num_steps}

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, tmp_path, train_fn)
    assert calls == [(1, 80, 0), (1, 80, 1), (1, 160, 0), (1, 160, 1)]
    calls.clear()
    folders = sweep.run_sweep(config, tmp_path, train_fn)
    assert calls == [(1, 160, 1), (2, 80, 0), (2, 80, 1), (2, 160, 0), (2, 160, 1)]  # finished runs are skipped
    assert [f.name for f in folders][:2] == [
        "num_codevector_groups=1,num_codevectors_per_group=80,seed=0",
        "num_codevector_groups=1,num_codevectors_per_group=80,seed=1",
    ]


def test_launch_commands_repeat_overrides_for_every_point(tmp_path):
    config = codebook_ablation.get_config()
    commands = sweep.launch_commands(
        config, "experiments/configs/codebook_ablation.py", tmp_path, ["--config.train.num_steps=7"]
    )
    assert len(commands) == 16
    prefix = "w2v-pretrain --config=experiments/configs/codebook_ablation.py"
    assert all(c.startswith(prefix) for c in commands)
    assert all("--config.train.num_steps=7" in c for c in commands)
    assert commands[-1].endswith(
        "--config.model.num_codevector_groups=2 --config.model.num_codevectors_per_group=320 --config.train.seed=1"
    )


def test_summary_over_seeds_is_the_mean_and_range_of_the_runs():
    rows = [
        {
            "model.num_codevector_groups": 1,
            "train.seed": seed,
            "codebook_size": 4,
            "valid_loss": loss,
            "valid_accuracy": accuracy,
            "probe_best_layer": layer,
        }
        for seed, loss, accuracy, layer in (
            (0, 1.0, 0.5, "layer 1"),
            (1, 3.0, 0.7, "layer 2"),
            (2, 2.0, 0.6, "layer 1"),
        )
    ] + [
        {
            "model.num_codevector_groups": 2,
            "train.seed": 0,
            "codebook_size": 8,
            "valid_loss": 0.5,
            "valid_accuracy": 0.9,
            "probe_best_layer": "conv",
        }
    ]
    points = sweep.summarize_seeds(rows)
    assert [p["seeds"] for p in points] == [[0, 1, 2], [0]]
    assert points[0]["valid_loss"] == sweep.Spread(2.0, 1.0, 3.0)
    assert points[0]["valid_accuracy"].mean == pytest.approx(0.6)
    assert points[0]["probe_best_layer"] == "layer 1/layer 2" and "train.seed" not in points[0]
    table = sweep.results_table(rows, ["num_codevector_groups=4,train.seed=0"])
    assert "| 1 | 4 | 3 | 2 [1, 3] | 0.6 [0.5, 0.7] | layer 1/layer 2 |" in table
    assert "| 2 | 8 | 1 | 0.5 | 0.9 | conv |" in table
    assert "not finished: num_codevector_groups=4,train.seed=0" in table


def _probe_report(values):
    """A report of a model's three layers with unseen-voice accuracies `values`."""
    results = tuple(
        probes.LayerProbeResult("checkpoint", layer, value, value / 2)
        for layer, value in zip(("conv", "layer 0", "layer 1"), values)
    )
    return probes.PhoneProbeReport(
        results,
        {"unseen_voice": 0.1, "held_out_sentences": 0.1},
        {"train": 10, "unseen_voice": 5, "held_out_sentences": 5},
        4,
        ("m2",),
    )


def test_collect_results_summarises_seeds_probes_once_and_lists_missing_runs(tmp_path):
    config = codebook_ablation.get_config("tiny")
    config.train.num_steps = 5
    config.grid.model.num_codevector_groups = (1, 2)
    config.grid.model.num_codevectors_per_group = (4,)
    names = [sweep.point_name(p) for p in sweep.expand_grid(config.grid)]
    assert names[0] == "num_codevector_groups=1,num_codevectors_per_group=4,seed=0"
    for name in names[:3]:  # G=2, seed 1 is not finished
        _fake_run(tmp_path / name, 5, 2.5)
    loaded, probed = [], []

    def load_model(folder):
        loaded.append(folder.name)
        groups = 1 if "groups=1" in folder.name else 2
        model_config = Wav2Vec2Config.from_run_config(config).replace(
            num_codevector_groups=groups, num_codevectors_per_group=4
        )
        return Wav2Vec2ForPreTraining(model_config, rngs=nnx.Rngs(0))

    # Each run's probe: the best layer and its accuracy differ between the seeds.
    per_run = {names[0]: (0.3, 0.5, 0.4), names[1]: (0.3, 0.4, 0.7), names[2]: (0.2, 0.2, 0.2)}

    def phone_probe(model, sets, *, name, baselines, steps):
        assert not baselines and sets is probe_sets
        probed.append((loaded[-1], steps))
        return _probe_report(per_run[loaded[-1]])

    utterance = Utterance("a", np.zeros(3200, np.float32), "en", (), np.zeros(0), np.zeros(0), "en+m1")
    probe_sets = probes.ProbeSets((utterance,), (), (utterance,), ())
    waveforms = [np.random.RandomState(0).randn(9600).astype(np.float32)]
    rows = sweep.collect_results(
        config, tmp_path, waveforms, load_model, probe_sets=probe_sets, probe_steps=7, phone_probe=phone_probe
    )
    assert [r["train.seed"] for r in rows] == [0, 1, 0] and [r["codebook_size"] for r in rows] == [4, 4, 8]
    assert rows[0]["train_loss"] == pytest.approx(2.7) and rows[0]["train_chance_accuracy"] == 0.3
    assert [r["probe_best_layer"] for r in rows] == ["layer 0", "layer 1", "conv"]
    assert [r["probe_last_unseen_voice"] for r in rows] == [0.4, 0.7, 0.2]
    for row in rows:
        assert row["valid_accuracy_above_chance"] == row["valid_accuracy"] - row["valid_chance_accuracy"]
        assert row["valid_chance_accuracy"] >= 1 / (1 + config.model.num_negatives)
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        assert [r["train.seed"] for r in csv.DictReader(f)] == ["0", "1", "0"]
    first = sweep.summarize_seeds(rows)[0]
    assert first["probe_best_unseen_voice"] == sweep.Spread(0.6, 0.5, 0.7)
    assert first["probe_best_layer"] == "layer 0/layer 1"
    valid = [r["valid_accuracy"] for r in rows[:2]]
    assert first["valid_accuracy"] == sweep.Spread(np.mean(valid), min(valid), max(valid))
    table = (tmp_path / sweep.RESULTS_MD).read_text()
    assert f"| 1 | 4 | 4 | 2 | {first['valid_loss']} |" in table
    assert f"not finished: {names[3]}" in table
    for name in (sweep.RESULTS_PNG, sweep.RESULTS_CURVES_PNG):
        assert (tmp_path / name).stat().st_size > 10_000
    # Collected again: each run's probe comes from its phone_probe.json; other probe steps recompute.
    sweep.collect_results(
        config, tmp_path, waveforms, load_model, probe_sets=probe_sets, probe_steps=7, phone_probe=phone_probe
    )
    assert probed == [(name, 7) for name in names[:3]]
    sweep.collect_results(
        config, tmp_path, waveforms, load_model, probe_sets=probe_sets, probe_steps=8, phone_probe=phone_probe
    )
    assert probed[3:] == [(name, 8) for name in names[:3]]


@pytest.mark.slow
def test_sweep_launcher_runs_a_tiny_grid_with_two_seeds(env, tmp_path):
    """The real trainer on a 2 x 1 x 2 grid (G x V x seed) of 2 steps, then collection with the phone
    probe; a second run retrains and reprobes nothing."""
    command = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--config=experiments/configs/codebook_ablation.py:tiny",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=2",
        "--config.train.warmup_steps=1",
        "--config.train.batch_size=2",
        "--config.grid.model.num_codevector_groups=(1,2)",
        "--config.grid.model.num_codevectors_per_group=(8,)",
        "--max_utterances=2",
        "--probe_steps=20",
    ]
    first = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    # Quiet output: no absl/orbax INFO lines (`I1127 12:00:00.000 ...`), a few lines per run.
    lines = first.stderr.splitlines()
    assert not [line for line in lines if re.match(r"I\d{4} ", line.split("\r")[-1])], first.stderr[-2000:]
    assert len(lines) < 30 * 4, first.stderr[-2000:]  # each progress-bar redraw (\r) counts as a line
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["codebook_size"]), int(r["train.seed"])) for r in rows] == [(8, 0), (8, 1), (16, 0), (16, 1)]
    assert all(int(r["step"]) == 2 and r["probe_best_layer"] for r in rows)
    table = (tmp_path / sweep.RESULTS_MD).read_text()
    assert "| 1 | 8 | 8 | 2 |" in table and "| 2 | 8 | 16 | 2 |" in table
    assert (tmp_path / sweep.RESULTS_CURVES_PNG).stat().st_size > 0
    files = [*tmp_path.glob("*/metrics.jsonl"), *tmp_path.glob(f"*/{sweep.PROBE_CACHE}")]
    assert len(files) == 8
    mtimes = {p: p.stat().st_mtime for p in files}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=HANG_TIMEOUT)
    assert {p: p.stat().st_mtime for p in files} == mtimes  # nothing retrained or probed again
