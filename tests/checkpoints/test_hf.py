"""Checkpoint interop: exact round trips, transformers loads our export, both weight-norm layouts,
`pytorch_model.bin` read without torch."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from tests.support import HANG_TIMEOUT
from tests.support.imports import BLOCK_REFERENCE
from tests.support.launchers import run_main
from w2v_jax.checkpoints.folder import INTEGRITY_FILE, load_checkpoint, save_checkpoint
from w2v_jax.checkpoints.hf import hf_keys, load_hf_checkpoint, params_from_hf, params_to_hf, save_hf_checkpoint
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining, Wav2Vec2Model

CONFIGS = {
    "group_post_ln": Wav2Vec2Config.preset("tiny"),
    "layer_pre_ln": Wav2Vec2Config.preset("tiny", feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True),
}


def _params(model) -> dict:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for path in pa:
        np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


def _reference_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_in_memory_round_trip_is_exact(name):
    config = CONFIGS[name]
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(3))
    state_dict = params_to_hf(nnx.state(model, nnx.Param), config)
    restored = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(4))
    nnx.update(restored, params_from_hf(config, state_dict))
    _assert_same_params(model, restored)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_loads_our_export_and_we_load_it_back(name, tmp_path):
    config = CONFIGS[name]
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(1))
    save_hf_checkpoint(config, model, tmp_path)
    reference, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = params_to_hf(nnx.state(model, nnx.Param), config)
    loaded = _reference_state_dict(reference)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    # JAX -> transformers -> JAX, through files: exact.
    loaded_config, restored = load_hf_checkpoint(tmp_path)
    assert loaded_config == config
    _assert_same_params(model, restored)


def test_legacy_weight_norm_names_in_pytorch_model_bin(tmp_path):
    config = CONFIGS["layer_pre_ln"]
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    reference.save_pretrained(tmp_path / "current")
    # torch.nn.utils.weight_norm's names, as older checkpoints store them, in a torch pickle.
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    legacy = {}
    for key, value in reference.state_dict().items():
        for new, old in renames.items():
            key = key.replace(new, old)
        legacy[key] = value
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in legacy
    (tmp_path / "legacy").mkdir()
    torch.save(legacy, tmp_path / "legacy" / "pytorch_model.bin")
    (tmp_path / "legacy" / "config.json").write_text((tmp_path / "current" / "config.json").read_text())
    _, current = load_hf_checkpoint(tmp_path / "current")
    _, old = load_hf_checkpoint(tmp_path / "legacy")
    _assert_same_params(current, old)


_READ_WITHOUT_TORCH = """
import sys
import safetensors.numpy
from flax import nnx
from w2v_jax.checkpoints.hf import load_hf_checkpoint, params_to_hf
for folder in sys.argv[1:]:
    _, model = load_hf_checkpoint(folder)
    safetensors.numpy.save_file(params_to_hf(nnx.state(model, nnx.Param)), f"{folder}/read.safetensors")
print(sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "transformers")))
"""


def test_pytorch_model_bin_folders_load_without_torch_as_their_safetensors(tmp_path, env):
    config = CONFIGS["layer_pre_ln"]
    folders = []
    for cls in (transformers.Wav2Vec2ForPreTraining, transformers.Wav2Vec2ForCTC):
        torch.manual_seed(0)
        reference = cls(transformers.Wav2Vec2Config(**config.to_hf_dict()))
        reference.save_pretrained(tmp_path / cls.__name__ / "safetensors")
        # transformers 4.x's save_pretrained(safe_serialization=False) (5.x writes safetensors only):
        # config.json and `torch.save` of the state dict's tensors, storages as the model holds them.
        reference.config.save_pretrained(tmp_path / cls.__name__ / "bin")
        torch.save(dict(reference.state_dict()), tmp_path / cls.__name__ / "bin" / "pytorch_model.bin")
        folders.append(tmp_path / cls.__name__)
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_REFERENCE + _READ_WITHOUT_TORCH, *(str(f / "bin") for f in folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["[]"]  # neither torch nor transformers was imported
    for folder in folders:
        expected_config, expected = load_hf_checkpoint(folder / "safetensors")
        assert Wav2Vec2Config.from_json_file(folder / "bin" / "config.json") == expected_config
        read = safetensors.numpy.load_file(folder / "bin" / "read.safetensors")
        params = params_to_hf(nnx.state(expected, nnx.Param))
        assert read.keys() == params.keys() and any(k.startswith("lm_head.") for k in read) == ("CTC" in folder.name)
        for key, value in params.items():
            np.testing.assert_array_equal(read[key], value, err_msg=key)


def test_a_bfloat16_pytorch_model_bin_loads_as_its_values_in_float32(tmp_path):
    config = CONFIGS["group_post_ln"]
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    reference = reference.to(torch.bfloat16)
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    _, model = load_hf_checkpoint(tmp_path)
    expected = {k: v.float().numpy() for k, v in reference.state_dict().items()}
    for key, value in params_to_hf(nnx.state(model, nnx.Param), config).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_sharded_safetensors_checkpoint(tmp_path):
    config = CONFIGS["group_post_ln"]
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _, model = load_hf_checkpoint(tmp_path)
    expected = _reference_state_dict(reference)
    for key, value in params_to_hf(nnx.state(model, nnx.Param), config).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_model_without_masking_has_no_mask_embedding_in_transformers(tmp_path):
    config = Wav2Vec2Config.preset("tiny", mask_time_prob=0.0)
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    save_hf_checkpoint(config, model, tmp_path)
    assert "wav2vec2.masked_spec_embed" not in safetensors.numpy.load_file(tmp_path / "model.safetensors")
    _, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    load_hf_checkpoint(tmp_path)  # and it loads back (the embedding keeps its initialisation)


def test_key_names():
    assert hf_keys(("wav2vec2", "feature_extractor", "layers", 0, "norm", "scale")) == (
        "wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight",
    )
    assert hf_keys(("wav2vec2", "encoder", "pos_conv_embed", "weight_g")) == (
        "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "wav2vec2.encoder.pos_conv_embed.conv.weight_g",
    )
    assert hf_keys(("project_q", "kernel")) == ("project_q.weight",)
    assert hf_keys(("wav2vec2", "encoder", "layers", 1, "attention", "q_proj", "bias")) == (
        "wav2vec2.encoder.layers.1.attention.q_proj.bias",
    )
    # A bare Wav2Vec2Model: transformers' keys without the prefix.
    assert hf_keys(("feature_extractor", "layers", 0, "conv", "kernel")) == (
        "feature_extractor.conv_layers.0.conv.weight",
    )
    assert hf_keys(("masked_spec_embed",)) == ("masked_spec_embed",)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_encoder_folder_both_ways(name, tmp_path):
    """A transformers Wav2Vec2Model folder (keys without `wav2vec2.`) loads as our Wav2Vec2Model and back."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    reference = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    reference.save_pretrained(tmp_path / "hf")
    loaded_config, model = load_hf_checkpoint(tmp_path / "hf")
    assert isinstance(model, Wav2Vec2Model) and loaded_config == config
    expected = _reference_state_dict(reference)
    exported = params_to_hf(nnx.state(model, nnx.Param), config)
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    save_hf_checkpoint(config, model, tmp_path / "ours")
    _, info = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    save_checkpoint(config, model, tmp_path / "native")
    _, restored = load_checkpoint(tmp_path / "native")
    assert isinstance(restored, Wav2Vec2Model)
    _assert_same_params(model, restored)


def test_params_safetensors_with_the_encoder_at_the_top_level_are_refused(tmp_path):
    """A pretraining model's encoder parameters outside `wav2vec2` (the layout before the encoder was
    nested) are not read as a bare encoder: the error names the heads that don't belong."""
    config = CONFIGS["group_post_ln"]
    save_checkpoint(config, Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(2)), tmp_path)
    stored = safetensors.numpy.load_file(tmp_path / "params.safetensors")
    old = {k.removeprefix("wav2vec2."): v for k, v in stored.items()}
    assert "encoder.layers.0.attention.q_proj.kernel" in old and "quantizer.codevectors" in old
    safetensors.numpy.save_file(old, tmp_path / "params.safetensors")
    (tmp_path / INTEGRITY_FILE).unlink()
    with pytest.raises(ValueError, match=r"does not match the config: missing \[\], unexpected \['project_hid.bias'"):
        load_checkpoint(tmp_path)


def test_mismatched_checkpoints_are_clear_errors(tmp_path):
    config = CONFIGS["group_post_ln"]
    state_dict = params_to_hf(nnx.state(Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0)), nnx.Param), config)
    missing = dict(state_dict)
    del missing["project_q.bias"]
    with pytest.raises(ValueError, match="missing keys \\['project_q.bias'\\]"):
        params_from_hf(config, missing)
    with pytest.raises(ValueError, match="unexpected keys \\['projector.weight'\\]"):
        params_from_hf(config, state_dict | {"projector.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="shape mismatches"):
        params_from_hf(config.replace(proj_codevector_dim=8), state_dict)
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_command_line_converter_both_directions(tmp_path, capsys):
    config = CONFIGS["layer_pre_ln"]
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(5))
    save_checkpoint(config, model, tmp_path / "ours")
    run_main(convert_checkpoint, ["jax-to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
    run_main(convert_checkpoint, ["hf-to-jax", str(tmp_path / "hf"), str(tmp_path / "back")])
    assert "hf-to-jax" in capsys.readouterr().out
    transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf")
    loaded_config, restored = load_checkpoint(tmp_path / "back")
    assert loaded_config == config
    _assert_same_params(model, restored)
    with pytest.raises(SystemExit):
        run_main(convert_checkpoint, ["sideways", "a", "b"])


def test_loaded_model_keeps_float32_params_with_a_compute_dtype(tmp_path):
    config = CONFIGS["group_post_ln"]
    save_hf_checkpoint(config, Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0)), tmp_path)
    _, model = load_hf_checkpoint(tmp_path, dtype=jax.numpy.bfloat16)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert model.dtype == jax.numpy.bfloat16


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "transformers"])
def test_absurd_config_is_refused_before_building_a_model(tmp_path, ours):
    """config.json asking for 10**9 layers: refused from the weights' layer count, in well under a second."""
    config = CONFIGS["group_post_ln"]
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    (save_checkpoint if ours else save_hf_checkpoint)(config, model, tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(hf_config | {"num_hidden_layers": 10**9}))
    (tmp_path / INTEGRITY_FILE).unlink(missing_ok=True)  # a crafted folder comes without a record
    load = load_checkpoint if ours else load_hf_checkpoint
    with pytest.raises(
        ValueError, match="num_hidden_layers asks for 1000000000 layers but the weights hold layers 0..1"
    ):
        load(tmp_path)
    extra_conv = {
        "conv_dim": [32] * 9,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2, 1, 1],
    }
    (tmp_path / "config.json").write_text(json.dumps(hf_config | extra_conv))
    with pytest.raises(ValueError, match="conv_dim asks for 9 layers but the weights hold layers 0..6"):
        load(tmp_path)


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    config = CONFIGS["group_post_ln"]
    save_hf_checkpoint(config, Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0)), tmp_path / "hf")
    weights = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
    weights["project_q.bias"][3] = np.nan
    safetensors.numpy.save_file(weights, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match=r"1 weight arrays hold NaN or infinity \(first: project_q.bias\)"):
        load_hf_checkpoint(tmp_path / "hf")
    with pytest.raises(SystemExit, match="--allow_nonfinite"):
        run_main(convert_checkpoint, ["hf-to-jax", str(tmp_path / "hf"), str(tmp_path / "ours")])
    run_main(convert_checkpoint, ["hf-to-jax", str(tmp_path / "hf"), str(tmp_path / "ours"), "--allow_nonfinite"])
    with pytest.raises(ValueError, match="NaN or infinity"):
        load_checkpoint(tmp_path / "ours")
    _, model = load_checkpoint(tmp_path / "ours", allow_nonfinite=True)
    assert np.isnan(np.asarray(model.project_q.bias[...])[3])
