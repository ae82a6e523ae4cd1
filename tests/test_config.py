"""Wav2Vec2Config: presets, transformers config.json interop, validation."""

import dataclasses
import json

import jax
import ml_collections
import pytest
import torch
import transformers
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v_jax.asr.task import FINETUNING_FIELDS
from w2v_jax.config import ARCHITECTURE_FIELDS, DROPOUT_FIELDS, TRAINING_FIELDS, Wav2Vec2Config
from w2v_jax.configs import pretrain
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining


def _num_params_ours(config: Wav2Vec2Config) -> int:
    abstract = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(config))
    return sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def _num_params_reference(config: Wav2Vec2Config) -> int:
    with torch.device("meta"):  # shapes only: instant even for LARGE
        model = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "mini", "small", "base", "large"])
def test_preset_parameter_count_equals_transformers(name):
    config = Wav2Vec2Config.preset(name)
    assert _num_params_ours(config) == _num_params_reference(config)


@pytest.mark.parametrize("name, millions", [("base", 95), ("large", 317)])
def test_paper_sizes(name, millions):
    # REFERENCE.md: BASE 95M, LARGE 317M parameters.
    assert round(_num_params_ours(Wav2Vec2Config.preset(name)) / 1e6) == millions


def test_presets_follow_fairseq_recipes():
    base, large = Wav2Vec2Config.preset("base"), Wav2Vec2Config.preset("large")
    assert (base.feat_extract_norm, base.do_stable_layer_norm, base.conv_bias) == ("group", False, False)
    assert (large.feat_extract_norm, large.do_stable_layer_norm, large.conv_bias) == ("layer", True, True)
    assert base.mask_time_prob == large.mask_time_prob == 0.65
    assert (base.feature_penalty_weight, base.feature_grad_mult) == (10.0, 0.1)
    assert (large.feature_penalty_weight, large.feature_grad_mult) == (0.0, 1.0)
    assert base.inputs_to_logits_ratio == 320


def test_overrides_and_unknown_fields():
    assert Wav2Vec2Config.preset("tiny", num_negatives=3).num_negatives == 3
    with pytest.raises(ValueError, match="unknown preset"):
        Wav2Vec2Config.preset("huge")
    with pytest.raises(ValueError, match="num_negativs"):
        Wav2Vec2Config.preset("tiny", num_negativs=3)


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_hf_dict_round_trip_through_transformers(name):
    config = Wav2Vec2Config.preset(name)
    assert Wav2Vec2Config.from_hf_dict(config.to_hf_dict()) == config
    # transformers accepts the dict (fairseq fields ride along) and gives it back.
    reference = transformers.Wav2Vec2Config(**config.to_hf_dict())
    assert Wav2Vec2Config.from_hf_dict(reference.to_dict()) == config


def test_json_file_round_trip(tmp_path):
    config = Wav2Vec2Config.preset("small", layerdrop=0.2)
    config.to_json_file(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "wav2vec2"
    assert Wav2Vec2Config.from_json_file(tmp_path / "config.json") == config


def test_transformers_defaults_mean_what_they_mean_to_transformers():
    reference = transformers.Wav2Vec2Config()
    config = Wav2Vec2Config.from_hf_dict(reference.to_dict())
    for field in dataclasses.fields(Wav2Vec2Config):
        if hasattr(reference, field.name):
            expected = getattr(reference, field.name)
            expected = tuple(expected) if isinstance(expected, list | tuple) else expected
            assert getattr(config, field.name) == expected, field.name
    # transformers has no feature penalty and a full encoder gradient.
    assert (config.feature_penalty_weight, config.feature_grad_mult) == (0.0, 1.0)
    # A minimal config.json gets transformers' defaults too, not ours.
    assert Wav2Vec2Config.from_hf_dict({"model_type": "wav2vec2"}).mask_time_prob == reference.mask_time_prob


def test_from_hf_dict_rejects_other_architectures():
    with pytest.raises(ValueError, match="model_type"):
        Wav2Vec2Config.from_hf_dict({"model_type": "hubert"})
    with pytest.raises(ValueError, match="adapter"):
        Wav2Vec2Config.from_hf_dict({"add_adapter": True})


@pytest.mark.parametrize(
    "field, value",
    [
        ("conv_dim", (32,) * 6),  # lengths differ from conv_kernel's
        ("conv_kernel", (10, 3, 3, 3, 3, 2, 0)),
        ("feat_extract_norm", "batch"),
        ("feat_extract_activation", "relu"),
        ("hidden_act", "tanh"),
        ("num_attention_heads", 5),  # doesn't divide 32
        ("num_conv_pos_embedding_groups", 3),
        ("codevector_dim", 15),  # not divisible by 2 groups
        ("num_codevectors_per_group", 1),
        ("hidden_dropout", 1.0),
        ("layerdrop", -0.1),
        ("mask_time_prob", 1.5),
        ("mask_time_length", 0),
        ("mask_time_min_masks", -1),
        ("num_negatives", 0),
        ("contrastive_logits_temperature", 0.0),
        ("feature_grad_mult", -1.0),
        ("layer_norm_eps", float("nan")),
        ("num_hidden_layers", 2.0),
        ("conv_bias", 1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Wav2Vec2Config.preset("tiny", **{field: value})


def _parameter_shapes(config: Wav2Vec2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape in the pretraining and the CTC model of `config` (traced, not built)."""
    shapes = {}
    for cls in (Wav2Vec2ForPreTraining, Wav2Vec2ForCTC):
        abstract = nnx.eval_shape(lambda cls=cls: cls(config))
        for path, value in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
            shapes[f"{cls.__name__}.{'.'.join(map(str, path))}"] = tuple(value.shape)
    return shapes


def _another_value(config: Wav2Vec2Config, name: str):
    """A valid value of field `name` other than `config`'s."""
    value = getattr(config, name)
    others = {"ctc_loss_reduction": "mean", "attention_implementation": "explicit", "feat_extract_norm": "layer"}
    if name in others:
        return others[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return (value[0] + 8, *value[1:])
    if isinstance(value, int):
        return value * 2 if value and name != "pad_token_id" else value + 1
    return 0.5 if value == 0 else value / 2


def test_the_architecture_and_training_fields_split_the_config():
    """Every field is one or the other; a training field never changes a weight's shape (a run's
    config sets it over a checkpoint's weights); an architecture field shapes the weights unless it
    is one of those that change what the weights compute."""
    names = [f.name for f in dataclasses.fields(Wav2Vec2Config)]
    assert sorted(ARCHITECTURE_FIELDS + TRAINING_FIELDS) == sorted(names)
    assert not set(ARCHITECTURE_FIELDS) & set(TRAINING_FIELDS)
    assert set(FINETUNING_FIELDS) <= set(TRAINING_FIELDS)
    assert set(DROPOUT_FIELDS) <= set(TRAINING_FIELDS)
    tiny = Wav2Vec2Config.preset("tiny")
    shapes = _parameter_shapes(tiny)
    for name in TRAINING_FIELDS:
        assert _parameter_shapes(tiny.replace(**{name: _another_value(tiny, name)})) == shapes, name
    computation = {"conv_stride", "num_attention_heads", "hidden_act", "layer_norm_eps", "do_stable_layer_norm"}
    computation |= {"feat_extract_activation", "pad_token_id"}  # gelu alone; the CTC blank's id
    for name in sorted(set(ARCHITECTURE_FIELDS) - computation):
        changed = tiny.replace(**{name: _another_value(tiny, name)})
        if name == "num_codevector_groups":
            changed = changed.replace(codevector_dim=2 * tiny.codevector_dim)
        assert _parameter_shapes(changed) != shapes, name


def test_dropout_fields_are_every_dropout_of_the_config_and_each_is_a_probability():
    assert DROPOUT_FIELDS == tuple(f.name for f in dataclasses.fields(Wav2Vec2Config) if f.name.endswith("_dropout"))
    for name in DROPOUT_FIELDS:
        Wav2Vec2Config.preset("tiny", **{name: 0.5})
        with pytest.raises(ValueError, match=rf"{name}.*must be a probability in \[0, 1\)"):
            Wav2Vec2Config.preset("tiny", **{name: 1.0})


def test_config_is_hashable_for_static_jit_arguments():
    assert hash(Wav2Vec2Config.preset("tiny")) == hash(Wav2Vec2Config.preset("tiny"))
    assert isinstance(Wav2Vec2Config(conv_dim=[512] * 7).conv_dim, tuple)


@settings(max_examples=30, deadline=None)
@given(
    hidden_heads=st.sampled_from([(32, 1), (32, 2), (48, 3), (64, 4)]),
    layers=st.integers(1, 4),
    groups=st.sampled_from([1, 2, 4]),
    mask_time_prob=st.floats(0.0, 1.0),
    stable=st.booleans(),
)
def test_any_valid_config_round_trips(hidden_heads, layers, groups, mask_time_prob, stable):
    hidden, heads = hidden_heads
    config = Wav2Vec2Config.preset(
        "tiny",
        hidden_size=hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        num_codevector_groups=groups,
        codevector_dim=8 * groups,
        mask_time_prob=mask_time_prob,
        do_stable_layer_norm=stable,
    )
    assert Wav2Vec2Config.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config


def test_from_run_config_reads_the_model_section():

    run = pretrain.get_config("tiny")
    model = Wav2Vec2Config.from_run_config(run)
    assert model.hidden_size == run.model.hidden_size and model.conv_dim == tuple(run.model.conv_dim)
    assert model.feature_penalty_weight == run.model.feature_penalty_weight == 0.0
    # A run config read back from a workdir's config.json (lists, not tuples) gives the same model.
    assert Wav2Vec2Config.from_run_config(ml_collections.ConfigDict(json.loads(run.to_json()))) == model
    with pytest.raises(ValueError, match="no 'model' section"):
        Wav2Vec2Config.from_run_config(ml_collections.ConfigDict({"train": {"seed": 0}}))
    run.unlock()
    run.model.not_a_field = 1
    with pytest.raises(ValueError, match="not_a_field"):
        Wav2Vec2Config.from_run_config(run)
