"""w2v_jax/checkpoints/loading.py: `load_model` from any format (the formats themselves: test_hf,
test_folder; the run state's checkpoints: test_checkpointer, test_checkpoint_integrity), and a
training workdir's model read alone, without its optimizer state."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import w2v_jax
from tests.support.states import whole_state_target
from tools import loading_memory
from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer, load_model
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.hf import save_hf_checkpoint
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR, CONFIG_FILE
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.training import optim, train_step


def test_load_model_refuses_nothing_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)


def test_load_model_reads_our_and_transformers_folders(tmp_path):
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
    save_checkpoint(model.config, model, tmp_path / "ours")
    save_hf_checkpoint(model.config, model, tmp_path / "hf")
    expected = jax.tree.leaves(nnx.state(model, nnx.Param))
    for name in ("ours", "hf"):
        loaded = load_model(tmp_path / name)
        for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), expected):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)


@pytest.fixture(scope="module")
def pretraining_workdir(tmp_path_factory):
    """A tiny pretraining workdir written on 8 devices (parameters and moments split over `fsdp`):
    checkpoint 1 of the initial state, checkpoint 2 of it with other optimizer moments, checkpoint 3
    with other parameters. Returns (workdir, the state's parameters on the host)."""
    workdir = tmp_path_factory.mktemp("run")
    config = pretrain_config.get_config("tiny")
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    _, state, _ = train_step.create_train_state(
        Wav2Vec2Config.from_run_config(config),
        optim.optimizer_from_train_config(config.train),
        model_class=Wav2Vec2ForPreTraining,
        seed=0,
        mesh=sharding.make_mesh(data=2, fsdp=4),
        param_sharding="fsdp",
        min_fsdp_size=64,
    )
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(state.params)} == {8}
    plus_one = lambda tree: jax.tree.map(lambda x: x + 1, tree)  # noqa: E731
    checkpoints = checkpointer.Checkpointer(workdir / CHECKPOINTS_DIR, async_save=False)
    checkpoints.save(1, state, {})
    checkpoints.save(2, state.replace(opt_state=plus_one(state.opt_state)), {})
    checkpoints.save(3, state.replace(params=plus_one(state.params)), {})
    checkpoints.close()
    return workdir, [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_a_workdir_loads_its_parameters_alone_onto_one_device(pretraining_workdir, read_arrays):
    workdir, params = pretraining_workdir
    model = load_model(workdir, step=1)
    for loaded, expected in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), params, strict=True):
        assert loaded.sharding.device_set == {jax.local_devices()[0]}
        np.testing.assert_array_equal(np.asarray(loaded), expected)
    # Only the parameters were read: no optimizer moment, counter or step.
    assert len(read_arrays) == len(params) and all(name.startswith("params.") for name in read_arrays)


@pytest.fixture
def damaged_workdir(pretraining_workdir, tmp_path):
    """The workdir with checkpoint 1's files in place of 2's and 3's: checkpoint 2's parameters verify
    and its optimizer moments don't; checkpoint 3's parameters don't."""
    workdir = tmp_path / "run"
    shutil.copytree(pretraining_workdir[0], workdir)
    for step in ("2", "3"):
        shutil.rmtree(workdir / CHECKPOINTS_DIR / step / "state")
        shutil.copytree(workdir / CHECKPOINTS_DIR / "1" / "state", workdir / CHECKPOINTS_DIR / step / "state")
    return workdir


def test_damaged_optimizer_moments_do_not_block_loading_the_parameters(damaged_workdir, pretraining_workdir):
    params = pretraining_workdir[1]
    for loaded, expected in zip(_params(load_model(damaged_workdir, step=2)), params, strict=True):
        np.testing.assert_array_equal(loaded, expected)
    # Resuming the run (the whole state) reports the damage.
    reader = checkpointer.Checkpointer(damaged_workdir / CHECKPOINTS_DIR, read_only=True)
    with pytest.raises(checkpointer.CorruptCheckpointError, match=r"2 is corrupt: .* \(first: \.opt_state"):
        reader.restore(2, whole_state_target(damaged_workdir))
    reader.close()


def test_damaged_parameters_are_reported_corrupt(damaged_workdir, pretraining_workdir, caplog):
    step_dir = damaged_workdir / CHECKPOINTS_DIR / "3"
    with pytest.raises(checkpointer.CorruptCheckpointError, match=f"checkpoint {step_dir} is corrupt: "):
        load_model(damaged_workdir, step=3)
    # The newest checkpoint is corrupt: the newest intact one, 2, is read (its parameters verify).
    for loaded, expected in zip(_params(load_model(damaged_workdir)), pretraining_workdir[1], strict=True):
        np.testing.assert_array_equal(loaded, expected)
    assert any(f"checkpoint {step_dir} is corrupt" in m for m in caplog.messages)
    assert step_dir.is_dir()  # a reader moves nothing aside


@pytest.mark.parametrize(
    "layers, counts", [(3, r"\d+ arrays missing, 0 not in the model"), (1, r"0 arrays missing, \d+ not in the model")]
)
def test_a_workdir_of_another_model_is_a_mismatch_not_corruption(pretraining_workdir, tmp_path, layers, counts):
    workdir = tmp_path / "run"
    shutil.copytree(pretraining_workdir[0], workdir)
    config = json.loads((workdir / CONFIG_FILE).read_text())
    config["model"]["num_hidden_layers"] = layers
    (workdir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"does not match the state this run builds \({counts}") as info:
        load_model(workdir, step=1)
    assert not isinstance(info.value, checkpointer.CorruptCheckpointError)


def test_the_memory_tool_measures_a_load_beside_its_baseline(pretraining_workdir):
    """`tools.loading_memory` (docs/checkpoints.md's figures): a process that loads the model peaks
    above one that does everything else; the figures name this checkout's package."""
    (package, figures), *others = loading_memory.peak_memory(pretraining_workdir[0], runs=1).items()
    assert not others and pathlib.Path(package) == pathlib.Path(w2v_jax.__path__[0])
    assert figures["load_mib"] > figures["baseline_mib"] > 100
    assert figures["load_minus_baseline_mib"] == figures["load_mib"] - figures["baseline_mib"]
