"""The training loop in process: checkpoints after real updates, resume mid logging window, settings,
a task the loop has never heard of.

A tiny run on the 8 simulated devices (1 utterance each, 1 s crops of the embedded corpus). The
subprocess tests of the launcher (tests/e2e/test_pretrain.py) log every step; here `log_every`
does not divide `checkpoint_every`, so a checkpoint falls inside a logging window.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile
from flax import nnx

from tests.support.health import LossAbove
from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer, load_model
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.data import default_manifest, make_train_iterator, write_manifest
from w2v_jax.model import Wav2Vec2ForPreTraining, Wav2Vec2Model
from w2v_jax.pretraining import task as pretraining_task
from w2v_jax.pretraining.task import PretrainingTask, pretraining_hyperparams
from w2v_jax.training import health, metrics, optim, train_step, trainer

TIMING = metrics.RATE_FIELDS


def _config(num_steps=6):
    config = pretrain_config.get_config("tiny")
    config.model.num_hidden_layers = 1
    t = config.train
    t.num_steps, t.warmup_steps, t.log_every, t.checkpoint_every = num_steps, 2, 3, 2
    t.keep_checkpoints, t.plot, t.async_checkpointing = 5, False, False
    t.eval_every = 0  # validation replay across a resume is in tests/e2e/test_pretrain.py
    config.data.max_sample_size = config.data.min_sample_size = 16000
    return config


def _records(workdir):
    records = metrics.read_metrics(workdir / metrics.METRICS_FILE)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 6-step run; `saved` holds host copies of the parameters the loop checkpointed, by step."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    saved = {}
    save = checkpointer.Checkpointer.save

    def recording_save(self, step, state, host):
        saved[step] = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
        return save(self, step, state, host)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpointer.Checkpointer, "save", recording_save)
        trainer.train_and_evaluate(_config(), str(workdir), PretrainingTask())
    return workdir, saved


def test_resume_inside_a_logging_window_logs_what_an_uninterrupted_run_logs(uninterrupted, tmp_path, monkeypatch):
    # Crash when fetching the 6th batch: checkpoint 4 holds a window with step 4's metrics only
    # (steps 1-3 were logged at 3), which the resumed run must average with steps 5 and 6.
    make = pretraining_task.make_train_iterator

    class Crashing:
        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def __next__(self):
            self.count += 1
            if self.count == 6:
                raise RuntimeError("simulated crash")
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with monkeypatch.context() as patch:
        patch.setattr(pretraining_task, "make_train_iterator", lambda *a, **k: Crashing(make(*a, **k)))
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.train_and_evaluate(_config(), str(tmp_path), PretrainingTask())
    assert [r["step"] for r in _records(tmp_path)] == [3]
    checkpoints = checkpointer.Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.latest_step() == 4
    checkpoints.close()
    trainer.train_and_evaluate(_config(), str(tmp_path), PretrainingTask())
    resumed, reference = _records(tmp_path), _records(uninterrupted[0])
    assert [r["step"] for r in reference] == [3, 6]
    assert resumed == reference


def test_a_real_run_fed_non_finite_audio_is_named_divergent_and_stopped(tmp_path, monkeypatch):
    # From the 4th batch on the audio is NaN: every update is skipped, which the monitor names
    # divergence at the first logged step of a window of such updates, and train.health=stop ends.
    make = pretraining_task.make_train_iterator

    class Poisoned:
        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def __next__(self):
            self.count += 1
            batch = next(self.inner)
            if self.count >= 4:
                batch = {**batch, "input_values": np.full_like(batch["input_values"], np.nan)}
            return batch

        def __getattr__(self, name):
            return getattr(self.inner, name)

    config = _config(num_steps=6)
    config.train.health, config.train.health_window = "stop", 1
    monkeypatch.setattr(pretraining_task, "make_train_iterator", lambda *a, **k: Poisoned(make(*a, **k)))
    with pytest.raises(trainer.UnhealthyRunError, match="health: divergence at step 6: loss nan, 3 non-finite"):
        trainer.train_and_evaluate(config, str(tmp_path), PretrainingTask())
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [3, 6] and "health" not in records[0]
    assert records[1]["health"] == ["divergence"]


def test_loading_a_run_at_a_step_returns_that_steps_weights(uninterrupted):
    workdir, saved = uninterrupted
    assert sorted(saved) == [2, 4, 6]
    # The three checkpoints hold different weights, so a load of the wrong one fails.
    assert all(any(not np.array_equal(a, b) for a, b in zip(saved[s], saved[6])) for s in (2, 4))
    for step in (2, 4, 6, None):
        loaded = jax.tree.leaves(nnx.state(load_model(workdir, step=step), nnx.Param))
        for a, b in zip(loaded, saved[step or 6], strict=True):
            np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="no checkpoint 3"):
        load_model(workdir, step=3)


def test_checkpoint_round_trip_after_real_updates(tmp_path):
    # Every leaf of the state holds distinct values after two updates: Adam's two moments differ
    # from each other and from zero, so a restore that swaps or re-initialises them fails here.
    config = _config()
    model_config = Wav2Vec2Config.from_run_config(config)
    optimizer, hparams = pretraining_hyperparams(config.train)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    graphdef, state, shardings = train_step.create_train_state(
        model_config,
        optimizer,
        model_class=Wav2Vec2ForPreTraining,
        seed=0,
        mesh=mesh,
        param_sharding="fsdp",
        min_fsdp_size=64,
    )
    initial = checkpointer.abstract_like(state)
    step = train_step.TrainStep(graphdef, optimizer, hparams, mesh, shardings)
    rng = np.random.default_rng(0)
    for _ in range(3):  # step 0's learning rate is 0 (warmup): three updates move every parameter
        batch = {
            "input_values": rng.standard_normal((8, 8000)).astype(np.float32),
            "attention_mask": np.ones((8, 8000), np.int32),
        }
        state, _ = step(state, batch, jax.random.key(0))
    is_adam = lambda node: isinstance(node, optax.ScaleByAdamState)  # noqa: E731
    (adam,) = [node for node in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(node)]
    for mu, nu in zip(jax.tree.leaves(adam.mu), jax.tree.leaves(adam.nu), strict=True):
        assert np.all(np.asarray(nu) > 0) and not np.array_equal(np.asarray(mu), np.asarray(nu))
    checkpoints = checkpointer.Checkpointer(tmp_path, async_save=False)
    host = {"data_iterators": [{"epoch": 0, "position": 24}], "rng": [0, 0], "window": []}
    checkpoints.save(3, state, host)
    restored, restored_host = checkpoints.restore(3, initial)
    checkpoints.close()
    assert restored_host == host
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "section, name, value, match",
    [
        ("train", "batch_size", 12, "divisible by the number of devices"),
        ("train", "grad_accum_steps", 2, r"batch_size=8 must be divisible .*grad_accum_steps \(2\)"),
        ("train", "log_every", 0, "train.log_every must be a positive int"),
        ("train", "checkpoint_every", 0, "train.checkpoint_every must be a positive int"),
        ("train", "num_steps", -1, "train.num_steps must be a positive int"),
        ("data", "min_sample_size", 20000, "min_sample_size=20000 > data.max_sample_size=16000"),
    ],
)
def test_settings_are_checked_before_anything_runs(tmp_path, section, name, value, match):
    config = _config()
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(config, str(tmp_path / "run"), PretrainingTask())
    assert not (tmp_path / "run").exists()  # nothing written


def test_token_budget_gives_each_bucket_its_batch_and_one_compile(tmp_path):
    # 16 files in each of two buckets (16000 and 32000 samples); a budget of 256000 samples gives
    # 16 rows of the short bucket and 8 of the long one (multiples of the 8 devices): three batches
    # an epoch, two shapes.
    lengths = [20_000] * 16 + [36_000] * 16
    names = [f"u{i}.wav" for i in range(len(lengths))]
    for i, (name, length) in enumerate(zip(names, lengths)):
        signal = 0.1 * np.random.default_rng(i).standard_normal(length)
        soundfile.write(tmp_path / name, signal.astype(np.float32), 16_000)
    # Two corpora of equal size and weight: each gives half of every bucket's utterances an epoch.
    write_manifest(tmp_path / "a.tsv", ".", names[0::2], lengths[0::2])
    write_manifest(tmp_path / "b.tsv", ".", names[1::2], lengths[1::2])
    config = _config(num_steps=3)
    config.train.checkpoint_every, config.train.log_every = 3, 1
    config.data.update(
        train_manifests=(str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")),
        train_weights=(1.0, 1.0),
        min_sample_size=16_000,
        max_sample_size=32_000,
        num_buckets=2,
        max_tokens=256_000,
    )
    shapes = []
    step = train_step.TrainStep.__call__

    def recording_call(self, state, batch, key):
        shapes.append(batch["input_values"].shape)
        return step(self, state, batch, key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_step.TrainStep, "__call__", recording_call)
        summary = trainer.train_and_evaluate(config, str(tmp_path / "run"), PretrainingTask())
    assert sorted(shapes) == [(8, 32_000), (8, 32_000), (16, 16_000)]
    assert summary["num_compiles"] == 2
    records = _records(tmp_path / "run")
    # The losses are per masked frame whatever the rows: the short batch's masked count differs.
    assert len({r["num_masked"] for r in records}) > 1
    assert all(np.isfinite(r["loss"]) and 0 < r["accuracy"] < 1 for r in records)
    # A whole epoch read: exactly half of the rows from each corpus.
    assert records[-1]["data_share_a"] == records[-1]["data_share_b"] == 0.5


def test_eval_every_must_be_a_multiple_of_log_every():
    config = pretrain_config.get_config("tiny")
    config.train.eval_every = 15
    with pytest.raises(ValueError, match="train.eval_every must be 0 .* multiple of train.log_every=10"):
        trainer._validate(config)


# --- a third task, defined here: the loop runs it as it runs pretraining and fine-tuning ---------


@dataclasses.dataclass(frozen=True)
class HiddenEnergy:
    """A toy objective of the bare encoder: the context vectors' mean square, summed over real frames."""

    sums: tuple[str, ...] = ("loss",)
    counts: tuple[str, ...] = ("num_frames", "num_masked")
    normalizer: str = "num_frames"

    def loss(self, model, micro, key, step):
        out = model(micro["input_values"], micro["attention_mask"], deterministic=False, key=key)
        energy = jnp.sum(jnp.mean(jnp.square(out.last_hidden_state), axis=-1) * out.padding_mask)
        counts = {
            "num_frames": jnp.sum(out.padding_mask, dtype=jnp.int32),
            "num_masked": jnp.sum(out.mask_time_indices & out.padding_mask, dtype=jnp.int32),
        }
        return energy, {"loss": energy}, counts

    def frozen_gradients(self, grads, step):
        return grads

    def metrics(self, sums, counts, accum, step):
        frames, masked = counts["num_frames"].astype(jnp.float32), counts["num_masked"].astype(jnp.float32)
        return {
            "loss": sums["loss"] / frames,
            "frames_per_masked_frame": frames / jnp.maximum(masked, 1.0),
            "num_frames": frames,
            "num_masked": masked,
            "updates_seen": (step + 1).astype(jnp.float32),
        }


class HiddenEnergyTask:
    """A task the loop knows nothing of: its own model class, objective, metrics, evaluator and detectors."""

    name = "energy"
    model_class = Wav2Vec2Model
    metric_roles = metrics.MetricRoles(
        summed=("num_frames", "num_masked"),
        ratios={"frames_per_masked_frame": ("num_frames", "num_masked")},
        last=("updates_seen",),
        progress={"loss": "energy"},
        valid_progress={"energy": "valid energy"},
    )

    def prepare(self, config, workdir, *, primary):
        self.workdir = workdir

    def model_config(self, config):
        return Wav2Vec2Config.from_run_config(config)

    def optimizer_and_hyperparams(self, config):
        hparams = train_step.StepHyperparams(
            learning_rate=optim.schedule_from_train_config(config.train), objective=HiddenEnergy()
        )
        return optim.optimizer_from_train_config(config.train), hparams

    def initial_state(self, state):
        return state

    def data_iterator(self, config, *, batch_size, shard_index, shard_count):
        return make_train_iterator(
            default_manifest("train"),
            batch_size=batch_size,
            seed=config.train.seed,
            max_sample_size=config.data.max_sample_size,
            min_sample_size=config.data.min_sample_size,
            num_workers=0,
            shard_index=shard_index,
            shard_count=shard_count,
        )

    def make_evaluator(self, config, graphdef, mesh, state_shardings):
        return lambda state, step: {"energy": float(step)}

    def detectors(self, config):
        return [LossAbove(limit=0.0), health.Divergence()]

    def summary_lines(self, summary):
        return [f"  energy at step {summary['last_logged']['step']}: {summary['last_logged']['loss']:.3f}"]

    def plot(self, records, workdir):
        metrics.plot_loss_curve(records, workdir / metrics.LOSS_CURVE_FILE, [("loss", "energy")])


def test_a_task_the_loop_has_never_heard_of_runs_through_it(tmp_path):
    config = _config(num_steps=4)
    t = config.train
    t.log_every, t.eval_every, t.checkpoint_every, t.plot = 2, 2, 4, True
    t.health, t.health_window = "warn", 1
    steps = []
    call = train_step.TrainStep.__call__

    def recording_call(self, state, batch, key):
        state, step_metrics = call(self, state, batch, key)
        steps.append(step_metrics)
        return state, step_metrics

    task = HiddenEnergyTask()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_step.TrainStep, "__call__", recording_call)
        summary = trainer.train_and_evaluate(config, str(tmp_path), task)
    per_step = [{k: float(v) for k, v in m.items()} for m in jax.device_get(steps)]
    records = metrics.read_metrics(tmp_path / metrics.METRICS_FILE)
    assert [r["step"] for r in records] == [2, 4]
    for record, window in zip(records, (per_step[:2], per_step[2:])):
        # The task's declarations decide each reduction: sums, a ratio of sums, the last state, a mean.
        assert record["num_frames"] == sum(m["num_frames"] for m in window) == 2 * 8 * 49
        assert record["num_masked"] == sum(m["num_masked"] for m in window)
        assert record["frames_per_masked_frame"] == pytest.approx(record["num_frames"] / record["num_masked"])
        assert record["updates_seen"] == window[-1]["updates_seen"] == record["step"]
        assert record["loss"] == pytest.approx(np.mean([m["loss"] for m in window]), rel=1e-6)
        assert record["valid_energy"] == record["step"] and record["health"] == ["loss_above"]
    # The two steps' masks differ, so the ratio of sums is not the mean of the steps' ratios.
    means = np.mean([m["frames_per_masked_frame"] for m in per_step[:2]])
    assert records[0]["frames_per_masked_frame"] != pytest.approx(means)
    assert summary["last_valid"] == {"step": 4, "energy": 4.0}
    assert summary["health"] == "loss_above (steps 2-4, 2 records)"
    assert summary["checkpoint_steps"] == [4] and (tmp_path / metrics.LOSS_CURVE_FILE).is_file()
    lines = trainer.format_summary(summary, tmp_path, task).splitlines()
    assert lines[1] == f"  energy at step 4: {records[-1]['loss']:.3f}"
