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
from hypothesis import given, settings, strategies as st

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import codebook_ablation
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import sweep

REPO = Path(__file__).resolve().parents[2]


def test_codebook_grid_is_the_issue_grid():
    config = codebook_ablation.get_config()
    points = sweep.expand_grid(config.grid)
    assert len(points) == 12
    assert {(p["model.num_codevector_groups"], p["model.num_codevectors_per_group"]) for p in points} == set(
        itertools.product((1, 2, 4), (80, 160, 320, 640))
    )
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
    record = {"step": num_steps, "loss": loss, "accuracy": 0.5, "code_perplexity": 3.0}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def test_run_sweep_trains_each_point_once_and_resumes(tmp_path):
    config = codebook_ablation.get_config()
    config.train.num_steps = 5
    config.grid.model.num_codevectors_per_group = (80, 160)
    calls = []

    def train_fn(point_config, workdir):
        calls.append((point_config.model.num_codevector_groups, point_config.model.num_codevectors_per_group))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the sweep is killed during its 4th point
        _fake_run(Path(workdir), point_config.train.num_steps, 1.0)
        return {"step": point_config.train.num_steps}

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, tmp_path, train_fn)
    assert calls == [(1, 80), (1, 160), (2, 80), (2, 160)]
    calls.clear()
    folders = sweep.run_sweep(config, tmp_path, train_fn)
    assert calls == [(2, 160), (4, 80), (4, 160)]  # finished points are skipped
    assert [f.name for f in folders][:2] == ["num_codevector_groups=1,num_codevectors_per_group=80",
                                             "num_codevector_groups=1,num_codevectors_per_group=160"]


def test_launch_commands_repeat_overrides_for_every_point(tmp_path):
    config = codebook_ablation.get_config()
    commands = sweep.launch_commands(
        config, "experiments/configs/codebook_ablation.py", tmp_path, ["--config.train.num_steps=7"]
    )
    assert len(commands) == 12
    prefix = "python -m experiments.pretrain --config=experiments/configs/codebook_ablation.py"
    assert all(c.startswith(prefix) for c in commands)
    assert all("--config.train.num_steps=7" in c for c in commands)
    assert "--config.model.num_codevector_groups=4 --config.model.num_codevectors_per_group=640" in commands[-1]


def test_collect_results_tables_finished_points(tmp_path):
    config = codebook_ablation.get_config()
    config.train.num_steps = 5
    config.grid.model.num_codevector_groups = (1, 2)
    config.grid.model.num_codevectors_per_group = (80,)
    _fake_run(tmp_path / "num_codevector_groups=1,num_codevectors_per_group=80", 5, 2.5)
    def load_model(folder):
        return Wav2Vec2ForPreTraining(Wav2Vec2Config.from_run_config(config).replace(
            num_codevector_groups=1, num_codevectors_per_group=80), rngs=nnx.Rngs(0))

    waveforms = [np.random.RandomState(0).randn(9600).astype(np.float32)]
    rows = sweep.collect_results(config, tmp_path, waveforms, load_model)
    assert len(rows) == 1 and rows[0]["codebook_size"] == 80 and rows[0]["train_loss"] == 2.5
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        assert list(csv.DictReader(f))[0]["model.num_codevector_groups"] == "1"
    table = (tmp_path / sweep.RESULTS_MD).read_text()
    assert "not finished: num_codevector_groups=2,num_codevectors_per_group=80" in table
    assert (tmp_path / sweep.RESULTS_PNG).stat().st_size > 0


@pytest.mark.slow
def test_sweep_launcher_runs_a_two_point_tiny_grid(tmp_path):
    """The real trainer on a 2-point grid of 2 steps, then collection; a second run only collects."""
    command = [
        sys.executable, "-m", "experiments.sweep", "--config=experiments/configs/codebook_ablation.py",
        f"--workdir={tmp_path}", "--config.train.num_steps=2", "--config.train.warmup_steps=1",
        "--config.train.batch_size=2", "--config.grid.model.num_codevector_groups=(2,)",
        "--config.grid.model.num_codevectors_per_group=(8,16)", "--max_utterances=2",
    ]
    env = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    first = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)
    # Quiet output: no absl/orbax INFO lines (`I1127 12:00:00.000 ...`), a few lines per point.
    lines = first.stderr.splitlines()
    assert not [line for line in lines if re.match(r"I\d{4} ", line.split("\r")[-1])], first.stderr[-2000:]
    assert len(lines) < 60, first.stderr[-2000:]
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["codebook_size"]) for r in rows] == [16, 32] and all(int(r["step"]) == 2 for r in rows)
    mtimes = {p: p.stat().st_mtime for p in tmp_path.glob("*/metrics.jsonl")}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    assert {p: p.stat().st_mtime for p in tmp_path.glob("*/metrics.jsonl")} == mtimes  # nothing retrained
