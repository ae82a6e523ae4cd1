"""Continued pretraining (`config.init`: w2v_jax/pretraining/continued.py, task.py): every weight of
the step-0 state is the source's, for each source format; the architecture is the source's and the
training fields the config's; a source without the pretraining heads is refused unless fresh heads
are asked for; a continued run resumes exactly from its own checkpoints without reading the source,
and refuses another source on resume."""

import json
import logging
import os
import pathlib
import shutil
import signal

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer, load_model
from w2v_jax.checkpoints.fairseq import save_fairseq_checkpoint
from w2v_jax.checkpoints.fairseq2 import save_fairseq2_checkpoint
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.hf import save_hf_checkpoint
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR, CONFIG_FILE, MODEL_CONFIG_FILE
from w2v_jax.config import ARCHITECTURE_FIELDS, Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, Wav2Vec2Model
from w2v_jax.pretraining import continued
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.training import metrics, optim, train_step, trainer, workdir

# The source's architecture differs from the tiny config's (48-dim Transformer, 4 heads, 6 codewords
# of 3 groups) and so do its training fields (masking, negatives): the continued model must take the
# former from the source and the latter from the config.
SOURCE = Wav2Vec2Config.preset(
    "tiny",
    hidden_size=48,
    num_attention_heads=4,
    intermediate_size=96,
    num_codevector_groups=3,
    num_codevectors_per_group=6,
    codevector_dim=18,
    mask_time_prob=0.3,
    num_negatives=3,
    feature_penalty_weight=0.0,
    feature_grad_mult=1.0,
)
ARCHITECTURE_CHANGES = {
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "num_codevector_groups",
    "num_codevectors_per_group",
    "codevector_dim",
}


def _config(init: str = "", num_steps: int = 4, **fields) -> ml_collections.ConfigDict:
    """The tiny pretrain config at its smallest (8 x 1 s crops, one per simulated device)."""
    config = pretrain_config.get_config("tiny")
    config.init = init
    config.train.num_steps = num_steps
    config.train.warmup_steps = 1
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.plot = False
    config.data.max_sample_size = config.data.min_sample_size = 16_000
    config.update_from_flattened_dict(fields)
    return config


def _flat(tree) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(value[...]) for path, value in nnx.to_flat_state(tree)}


def _step0(config: ml_collections.ConfigDict, run: pathlib.Path) -> tuple[PretrainingTask, train_step.TrainState]:
    """The state a fresh run starts its first update from, built as the trainer builds it."""
    task = PretrainingTask()
    run.mkdir(parents=True, exist_ok=True)
    task.prepare(config, run, primary=True)
    _, state, _ = train_step.create_train_state(
        task.model_config(config),
        optim.optimizer_from_train_config(config.train),
        model_class=Wav2Vec2ForPreTraining,
        seed=config.train.seed,
        mesh=sharding.make_mesh(),
    )
    return task, task.initial_state(state)


def _source_model(seed: int = 1) -> Wav2Vec2ForPreTraining:
    return Wav2Vec2ForPreTraining(SOURCE, rngs=nnx.Rngs(seed))


def _write_workdir(folder: pathlib.Path) -> None:
    """A pretraining workdir whose checkpoint 3 holds the source model's parameters."""
    config = pretrain_config.get_config("tiny")
    config.model.update(
        {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in SOURCE.to_hf_dict().items()
            if name in config.model
        }
    )
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    _, state, _ = train_step.create_train_state(
        SOURCE, optim.make_optimizer(), model_class=Wav2Vec2ForPreTraining, seed=0, mesh=sharding.make_mesh()
    )
    state = state.replace(params=nnx.state(_source_model(), nnx.Param))
    checkpoints = checkpointer.Checkpointer(folder / CHECKPOINTS_DIR, async_save=False)
    checkpoints.save(3, state, {})
    checkpoints.close()


def _write_transformers(folder: pathlib.Path) -> None:
    """A `Wav2Vec2ForPreTraining` folder saved by transformers itself (its own random weights)."""
    torch.manual_seed(0)
    hf_config = transformers.Wav2Vec2Config(**{k: v for k, v in SOURCE.to_hf_dict().items() if k != "architectures"})
    transformers.Wav2Vec2ForPreTraining(hf_config).save_pretrained(folder)


def _write_fairseq2(path: pathlib.Path) -> pathlib.Path:
    """A fairseq2 `.pt` of the source model, its quantizer 1234 updates into its Gumbel schedule."""
    save_fairseq2_checkpoint(_source_model(), path, num_updates=1234)
    return path


SOURCE_FORMATS = {
    "workdir": lambda tmp: (_write_workdir(tmp / "workdir"), tmp / "workdir")[1],
    "folder": lambda tmp: (save_checkpoint(SOURCE, _source_model(), tmp / "ours"), tmp / "ours")[1],
    "transformers": lambda tmp: (_write_transformers(tmp / "hf"), tmp / "hf")[1],
    "fairseq": lambda tmp: (save_fairseq_checkpoint(_source_model(), tmp / "fs" / "w2v.pt"), tmp / "fs" / "w2v.pt")[1],
    "fairseq2": lambda tmp: _write_fairseq2(tmp / "fs2" / "w2v.pt"),
}
FORMAT_CASES = list(SOURCE_FORMATS)


@pytest.mark.parametrize("source_format", FORMAT_CASES)
def test_every_step0_weight_is_the_sources(source_format, tmp_path, caplog):
    source_path = SOURCE_FORMATS[source_format](tmp_path)
    source = load_model(source_path)
    assert isinstance(source, Wav2Vec2ForPreTraining)
    config = _config(str(source_path))
    with caplog.at_level(logging.INFO, logger="w2v_jax.pretraining.task"):
        task, state = _step0(config, tmp_path / "run")
    expected, got = _flat(nnx.state(source, nnx.Param)), _flat(state.params)
    # Every parameter, the heads (quantizer codevectors and projection, project_q, project_hid) and
    # the mask embedding included.
    assert set(got) == set(expected)
    assert {"wav2vec2.masked_spec_embed", "quantizer.codevectors", "project_q.kernel", "project_hid.kernel"} <= set(got)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert int(state.step) == 0
    # The optimizer starts fresh: Adam's moments are zeros.
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    model = task.model_config(config)
    for name in ARCHITECTURE_FIELDS:
        assert getattr(model, name) == getattr(source.config, name), name
    assert model.mask_time_prob == config.model.mask_time_prob != SOURCE.mask_time_prob
    assert model.num_negatives == config.model.num_negatives != SOURCE.num_negatives
    assert Wav2Vec2Config.from_json_file(tmp_path / "run" / MODEL_CONFIG_FILE) == model
    (line,) = [r.getMessage() for r in caplog.records if "continued pretraining from" in r.getMessage()]
    assert {part.split(":")[0] for part in line.split("from the config: ")[1].split("; ")} == ARCHITECTURE_CHANGES


@pytest.mark.parametrize("model_class", [Wav2Vec2Model, Wav2Vec2ForCTC])
def test_a_source_without_heads_is_refused_unless_fresh_heads_are_asked_for(model_class, tmp_path):
    source = model_class(SOURCE, rngs=nnx.Rngs(2))
    save_hf_checkpoint(SOURCE, source, tmp_path / "src")
    config = _config(str(tmp_path / "src"))
    with pytest.raises(ValueError, match=r"holds a .* without the pretraining heads.*--config\.init_fresh_heads=True"):
        _step0(config, tmp_path / "refused")
    assert not (tmp_path / "refused" / MODEL_CONFIG_FILE).exists()

    config.init_fresh_heads = True
    _, state = _step0(config, tmp_path / "run")
    encoder = _flat(nnx.state(source if model_class is Wav2Vec2Model else source.wav2vec2, nnx.Param))
    got = _flat(state.params)
    for name, value in encoder.items():
        np.testing.assert_array_equal(got[f"wav2vec2.{name}"], value, err_msg=name)
    # The heads are a fresh initialisation's: those of the same config's model with the run's seed.
    _, fresh, _ = train_step.create_train_state(
        continued.continued_model_config(config.model, SOURCE),
        optim.make_optimizer(),
        model_class=Wav2Vec2ForPreTraining,
        seed=0,
        mesh=sharding.make_mesh(),
    )
    for name, value in _flat(fresh.params).items():
        if not name.startswith("wav2vec2."):
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_fresh_heads_over_a_source_with_heads_keep_its_encoder_alone(tmp_path):
    source = _source_model()
    save_checkpoint(SOURCE, source, tmp_path / "src")
    _, state = _step0(_config(str(tmp_path / "src"), init_fresh_heads=True), tmp_path / "run")
    got, expected = _flat(state.params), _flat(nnx.state(source, nnx.Param))
    np.testing.assert_array_equal(got["wav2vec2.masked_spec_embed"], expected["wav2vec2.masked_spec_embed"])
    assert not np.array_equal(got["quantizer.codevectors"], expected["quantizer.codevectors"])


def test_model_config_takes_the_architecture_from_the_source():
    section = pretrain_config.get_config("tiny").model
    model = continued.continued_model_config(section, SOURCE)
    assert model.hidden_size == 48 and model.num_codevector_groups == 3
    assert model.mask_time_prob == section.mask_time_prob and model.num_negatives == section.num_negatives
    assert continued.architecture_differences(section, SOURCE) == [
        "hidden_size: 32 -> 48",
        "num_attention_heads: 2 -> 4",
        "intermediate_size: 64 -> 96",
        "num_codevector_groups: 2 -> 3",
        "num_codevectors_per_group: 8 -> 6",
        "codevector_dim: 16 -> 18",
    ]
    assert (
        continued.architecture_differences(section, Wav2Vec2Config.from_run_config(pretrain_config.get_config("tiny")))
        == []
    )
    bad = ml_collections.ConfigDict({**section.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="hiden_size"):
        continued.continued_model_config(bad, SOURCE)


def test_without_init_the_model_is_the_configs(tmp_path):
    config = _config()
    task, _ = _step0(config, tmp_path)
    assert task.model_config(config) == Wav2Vec2Config.from_run_config(config)
    assert not (tmp_path / MODEL_CONFIG_FILE).exists()


def _records(run: pathlib.Path) -> list[dict]:
    records = metrics.read_metrics(run / metrics.METRICS_FILE)
    return [{k: v for k, v in r.items() if k not in metrics.RATE_FIELDS} for r in records]


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("source") / "ours"
    save_checkpoint(SOURCE, _source_model(), folder)
    return folder


@pytest.mark.slow
def test_a_continued_run_resumes_exactly_without_its_source(source_folder, tmp_path, monkeypatch):
    """A preemption (SIGTERM after step 3's record: a checkpoint at step 3) then a restart with the
    source gone logs what an uninterrupted run logs; another source on resume is refused."""
    config = _config(str(tmp_path / "src"), num_steps=6)
    shutil.copytree(source_folder, tmp_path / "src")
    reference = trainer.train_and_evaluate(config, str(tmp_path / "reference"), PretrainingTask())
    assert reference["step"] == 6

    write = metrics.MetricWriter.write

    def preempt_at_3(self, step, values):
        write(self, step, values)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(metrics.MetricWriter, "write", preempt_at_3)
        stopped = trainer.train_and_evaluate(config, str(tmp_path / "run"), PretrainingTask())
    assert stopped["step"] == 3 and stopped["checkpoint_steps"] == [2, 3]
    # The source is gone (and an empty file at its place would not load): the resume never reads it.
    shutil.rmtree(tmp_path / "src")
    (tmp_path / "src").write_bytes(b"")
    resumed = trainer.train_and_evaluate(config, str(tmp_path / "run"), PretrainingTask())
    assert resumed["step"] == 6
    assert _records(tmp_path / "run") == _records(tmp_path / "reference")
    assert load_model(tmp_path / "run").config == Wav2Vec2Config.from_json_file(tmp_path / "run" / MODEL_CONFIG_FILE)

    other = _config(str(source_folder), num_steps=6)
    with pytest.raises(workdir.ConfigChangedError, match=r"init: '.*src' -> '.*ours'"):
        trainer.train_and_evaluate(other, str(tmp_path / "run"), PretrainingTask())
    fresh_heads = _config(str(tmp_path / "src"), num_steps=6, init_fresh_heads=True)
    with pytest.raises(workdir.ConfigChangedError, match=r"init_fresh_heads: False -> True"):
        trainer.train_and_evaluate(fresh_heads, str(tmp_path / "run"), PretrainingTask())
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["init"] == str(tmp_path / "src")
