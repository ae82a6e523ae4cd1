"""fairseq2's wav2vec 2.0 checkpoints (`.pt`), Omnilingual's included, both directions, without fairseq2.

A fairseq2 file holds weights alone: fairseq2 builds the model from an asset card (`model_family`
`wav2vec2` or `wav2vec2_asr`, `model_arch` a preset of its config registry) and copies the file's
tensors into it by name. So the architecture is named here from the tensors' shapes
(`detect_preset`; `arch=` names a preset or gives our config outright, and a file our exporter
wrote carries our config). The presets (`PRESETS`: fairseq2 0.8.1's `models/wav2vec2/config.py`
and `asr/config.py`, Omnilingual's `models/wav2vec2_ssl/config.py` and `wav2vec2_asr/config.py`)
differ in their shapes, the families in the quantizer's presence (`quantizer.entries`). Fine-tuning
presets that differ only in training fields (`base_10h` and `base_100h`; Omnilingual's CTC models
and `large_lv60k_10h` but for the vocabulary size) share shapes: detection takes the one of the
head's vocabulary size, else the first listed. Omnilingual's W2V 300M card names `large_lv60k`.

Top-level layouts, both read: fairseq2 0.3-0.4's `{"model": state_dict, "model_key": "model"[,
"fs2": True]}` and 0.5+'s bare state dict; keys may carry DDP's `module.` prefix. Reading needs no
torch (`torch_files.read_torch_checkpoint`'s restricted unpickler); a fairseq (1) `.pt` is told apart
by its top level (`is_fairseq2_state`): fairseq's holds `model` with `cfg` or `args`, fairseq2's
holds `model_key`, or tensors under fairseq2's module names.

Keys map to transformers' names (`_ENCODER`, `_HEADS`, after fairseq2's `interop.py` key maps) and
go through `hf.params_from_hf`. Norm placement: a post-LN model's norm after the positional conv is
fairseq2's `encoder_frontend.layer_norm`, a pre-LN model's final norm `encoder.layer_norm`;
transformers calls both `encoder.layer_norm`. The pretraining model's `final_proj` is transformers'
`project_hid`, the CTC model's its `lm_head`. `quantizer.num_updates` (an int64 buffer: the Gumbel
temperature is `max(max_temp * decay ** num_updates, min_temp)`) is returned beside the model
(`Fairseq2Import.num_updates`). The CTC blank is id 0 (torch's `ctc_loss` default, which fairseq2 uses).

Export (`save_fairseq2_checkpoint`, needs torch: the `reference` extra) writes what fairseq2 0.8.1
loads with `torch.load(weights_only=True)` into its card's model: the `model`/`model_key` layout
(fairseq2's state-dict converter takes `model` and nothing else), `quantizer.num_updates` included,
and beside them our config (`w2v_jax_config`, a transformers config.json dict) so that a model of no
preset reads back without `arch=`. Its card's `model_arch` is the preset `fairseq2_preset_of` names
(none: fairseq2 needs a card with config overrides).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.checkpoints.fairseq import HF_WEIGHT_NORM, rename_module
from w2v_jax.checkpoints.hf import model_from_hf, params_to_hf
from w2v_jax.checkpoints.torch_files import read_torch_checkpoint
from w2v_jax.checkpoints.weights import Model
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.reference import import_reference

PRETRAINING_FAMILY, ASR_FAMILY = "wav2vec2", "wav2vec2_asr"
_MODULE_PREFIX = "module."  # DDP's, which fairseq2 strips (`consume_prefix_in_state_dict_if_present`)

# ---------------------------------------------------------------------------------------------
# Presets: fairseq2's and Omnilingual's architectures in our config's fields


@dataclasses.dataclass(frozen=True)
class Fairseq2Preset:
    """A fairseq2 architecture: its family, our config of it, and (pretraining) the Gumbel
    temperature schedule `(max, min, decay per update)` its `codebook_sampling_temperature` gives."""

    family: str
    config: Wav2Vec2Config
    codebook_sampling_temperature: tuple[float, float, float] | None = None


# fairseq2's `Wav2Vec2Config()` / `Wav2Vec2EncoderConfig()` (the base architecture), our names.
# fairseq2 has no dropout on the quantizer's input (fairseq's dropout_features): 0.
_BASE: dict[str, Any] = dict(
    conv_bias=False,
    feat_extract_norm="group",
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_dropout=0.1,  # dropout_p: the frontend's output and every layer's
    attention_dropout=0.1,
    activation_dropout=0.0,  # ffn_inner_dropout_p
    feat_proj_dropout=0.0,  # first_pass_dropout_p
    feat_quantizer_dropout=0.0,
    layerdrop=0.05,
    do_stable_layer_norm=False,  # norm_order POST, with the frontend's layer_norm
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    mask_time_prob=0.69,  # max_temporal_mask_prob
    mask_time_length=10,
    mask_time_min_masks=2,
    mask_feature_prob=0.0,
    mask_feature_length=10,
    mask_feature_min_masks=2,
    num_codevector_groups=2,
    num_codevectors_per_group=320,
    codevector_dim=256,  # quantized_dim
    proj_codevector_dim=256,  # final_dim
    contrastive_logits_temperature=0.1,
    num_negatives=100,  # num_distractors
    feature_grad_mult=0.1,  # feature_grad_scale
)
_LARGE: dict[str, Any] = dict(
    _BASE,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_dropout=0.0,
    layerdrop=0.2,
    codevector_dim=768,
    proj_codevector_dim=768,
)
# Layer-norm convs with biases, pre-LN (no frontend norm after the positional conv).
_LARGE_LV60K: dict[str, Any] = dict(
    _LARGE, conv_bias=True, feat_extract_norm="layer", layerdrop=0.0, do_stable_layer_norm=True
)
# Omnilingual's wav2vec2_ssl presets, from its `xlsr_base` (large_lv60k without attention dropout).
_OMNI_1B: dict[str, Any] = dict(
    _LARGE_LV60K,
    attention_dropout=0.0,
    hidden_size=1280,
    num_hidden_layers=48,
    intermediate_size=5120,
    codevector_dim=1024,
    proj_codevector_dim=1024,
    feat_proj_dropout=0.1,
)
_OMNI_3B: dict[str, Any] = dict(_OMNI_1B, hidden_size=2048, num_hidden_layers=60, intermediate_size=8192)
_OMNI_7B: dict[str, Any] = dict(_OMNI_3B, num_hidden_layers=128)

_TEMPERATURE, _TEMPERATURE_LV60K = (2.0, 0.5, 0.999995), (2.0, 0.1, 0.999995)
# fairseq2's Wav2Vec2AsrConfig's encoder changes (full encoder gradient, dropout on the FFN's inner
# activations alone) and masks (spatial spans of 64 channels).
_ASR_ENCODER: dict[str, Any] = dict(
    feature_grad_mult=1.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.1
)
_ASR_MASKS: dict[str, Any] = dict(
    mask_time_prob=0.69, mask_feature_prob=0.55, mask_feature_length=64, final_dropout=0.0
)
# Omnilingual's CTC models: no masking (no mask embedding in the file), LayerDrop 0.1.
_OMNI_CTC: dict[str, Any] = dict(
    _ASR_ENCODER, layerdrop=0.1, mask_time_prob=0.0, mask_feature_prob=0.0, final_dropout=0.0
)
_OMNI_VOCAB_V1, _OMNI_VOCAB_V2 = 9812, 10288


def _asr(encoder: dict[str, Any], vocab_size: int = 32, **changes: Any) -> Fairseq2Preset:
    return Fairseq2Preset(
        ASR_FAMILY, Wav2Vec2Config(**{**encoder, **_ASR_ENCODER, **_ASR_MASKS, **changes}, vocab_size=vocab_size)
    )


def _omni_ctc(encoder: dict[str, Any], vocab_size: int) -> Fairseq2Preset:
    return Fairseq2Preset(ASR_FAMILY, Wav2Vec2Config(**{**encoder, **_OMNI_CTC}, vocab_size=vocab_size))


# Listed in detection's order of preference where shapes are shared.
PRESETS: dict[str, Fairseq2Preset] = {
    # fairseq2's wav2vec2 family (Omnilingual's W2V 300M card names large_lv60k).
    "base": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_BASE), _TEMPERATURE),
    "large": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_LARGE), _TEMPERATURE),
    "large_lv60k": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_LARGE_LV60K), _TEMPERATURE_LV60K),
    "omnilingual_w2v_1b": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_OMNI_1B), _TEMPERATURE_LV60K),
    "omnilingual_w2v_3b": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_OMNI_3B), _TEMPERATURE_LV60K),
    "omnilingual_w2v_7b": Fairseq2Preset(PRETRAINING_FAMILY, Wav2Vec2Config(**_OMNI_7B), _TEMPERATURE_LV60K),
    # fairseq2's wav2vec2_asr family.
    "base_10h": _asr(_BASE),
    "base_100h": _asr(_BASE, layerdrop=0.1),
    "large_10h": _asr(_LARGE, layerdrop=0.1, mask_time_prob=0.80, mask_feature_prob=0.30),
    "large_100h": _asr(_LARGE, layerdrop=0.1, mask_time_prob=0.53, mask_feature_prob=0.55),
    "large_lv60k_10h": _asr(_LARGE_LV60K, layerdrop=0.1, mask_time_prob=0.80, mask_feature_prob=0.30),
    "large_lv60k_100h": _asr(_LARGE_LV60K, layerdrop=0.1, mask_time_prob=0.53, mask_feature_prob=0.55),
    # Omnilingual's CTC models (its 300m, 1b, 3b, 7b and their _v2 tokenizer's sizes).
    "omnilingual_ctc_300m": _omni_ctc(_LARGE_LV60K, _OMNI_VOCAB_V1),
    "omnilingual_ctc_1b": _omni_ctc(_OMNI_1B, _OMNI_VOCAB_V1),
    "omnilingual_ctc_3b": _omni_ctc(_OMNI_3B, _OMNI_VOCAB_V1),
    "omnilingual_ctc_7b": _omni_ctc(_OMNI_7B, _OMNI_VOCAB_V1),
    "omnilingual_ctc_300m_v2": _omni_ctc(_LARGE_LV60K, _OMNI_VOCAB_V2),
    "omnilingual_ctc_1b_v2": _omni_ctc(_OMNI_1B, _OMNI_VOCAB_V2),
    "omnilingual_ctc_3b_v2": _omni_ctc(_OMNI_3B, _OMNI_VOCAB_V2),
    "omnilingual_ctc_7b_v2": _omni_ctc(_OMNI_7B, _OMNI_VOCAB_V2),
}

# ---------------------------------------------------------------------------------------------
# fairseq2's keys <-> transformers' keys

# (fairseq2 module, transformers module under `wav2vec2.`) of the encoder; `{i}` is a layer index.
_ENCODER = (
    ("encoder_frontend.feature_extractor.layers.{i}.conv", "feature_extractor.conv_layers.{i}.conv"),
    ("encoder_frontend.post_extract_layer_norm", "feature_projection.layer_norm"),
    ("encoder_frontend.model_dim_proj", "feature_projection.projection"),
    ("encoder_frontend.pos_encoder.conv", "encoder.pos_conv_embed.conv"),
    ("encoder.layers.{i}.self_attn.q_proj", "encoder.layers.{i}.attention.q_proj"),
    ("encoder.layers.{i}.self_attn.k_proj", "encoder.layers.{i}.attention.k_proj"),
    ("encoder.layers.{i}.self_attn.v_proj", "encoder.layers.{i}.attention.v_proj"),
    ("encoder.layers.{i}.self_attn.output_proj", "encoder.layers.{i}.attention.out_proj"),
    ("encoder.layers.{i}.self_attn_layer_norm", "encoder.layers.{i}.layer_norm"),
    ("encoder.layers.{i}.ffn.inner_proj", "encoder.layers.{i}.feed_forward.intermediate_dense"),
    ("encoder.layers.{i}.ffn.output_proj", "encoder.layers.{i}.feed_forward.output_dense"),
    ("encoder.layers.{i}.ffn_layer_norm", "encoder.layers.{i}.final_layer_norm"),
)
# The conv stack's norms: one GroupNorm after conv 0 ("group") or a LayerNorm after each ("layer").
_CONV_NORM = {
    "group": (
        "encoder_frontend.feature_extractor.layers.{i}.group_norm",
        "feature_extractor.conv_layers.{i}.layer_norm",
    ),
    "layer": (
        "encoder_frontend.feature_extractor.layers.{i}.layer_norm",
        "feature_extractor.conv_layers.{i}.layer_norm",
    ),
}
# The Transformer's norm outside the layers (module docstring): post-LN (False) or pre-LN (True).
_ENCODER_NORM = {
    False: ("encoder_frontend.layer_norm", "encoder.layer_norm"),
    True: ("encoder.layer_norm", "encoder.layer_norm"),
}
# Pretraining heads, at the top level in both.
_HEADS = (
    ("quantizer.entry_proj", "quantizer.weight_proj"),
    ("final_target_proj", "project_q"),
    ("final_proj", "project_hid"),
)
_CTC_HEAD = ("final_proj", "lm_head")
_PARAMETERS = {"masker.temporal_mask_embed": "wav2vec2.masked_spec_embed", "quantizer.entries": "quantizer.codevectors"}
NUM_UPDATES_KEY = "quantizer.num_updates"
# Our exporter's top-level entry beside `model` and `model_key`: our config as a transformers
# config.json dict (fairseq2 reads `model` alone).
CONFIG_ENTRY = "w2v_jax_config"


def _encoder_pairs(norm: str, pre_ln: bool) -> tuple[tuple[str, str], ...]:
    return (*_ENCODER, _CONV_NORM[norm], _ENCODER_NORM[pre_ln])


def fairseq2_to_hf_key(key: str, *, norm: str, pre_ln: bool, ctc: bool) -> str | None:
    """transformers' key of a fairseq2 `Wav2Vec2Model` (`ctc=False`) or `Wav2Vec2AsrModel` key
    (None: not a parameter of ours); `norm` is the conv stack's ("group" or "layer"), `pre_ln` the
    Transformer's norm order."""
    if key in _PARAMETERS:
        return _PARAMETERS[key]
    heads = (_CTC_HEAD,) if ctc else _HEADS
    if (name := rename_module(key, heads, reverse=False)) is not None:
        return name
    name = rename_module(key, _encoder_pairs(norm, pre_ln), reverse=False)
    return None if name is None else f"wav2vec2.{name}"


def hf_to_fairseq2_key(key: str, *, norm: str, pre_ln: bool, ctc: bool) -> str:
    """fairseq2's key of a transformers key of `Wav2Vec2ForPreTraining` (`ctc=False`) or `Wav2Vec2ForCTC`."""
    for long, short in HF_WEIGHT_NORM.items():
        key = key.replace(long, short)
    for name, hf_name in _PARAMETERS.items():
        if key == hf_name:
            return name
    if not key.startswith("wav2vec2."):
        renamed = rename_module(key, (_CTC_HEAD,) if ctc else _HEADS, reverse=True)
    else:
        renamed = rename_module(key.removeprefix("wav2vec2."), _encoder_pairs(norm, pre_ln), reverse=True)
    if renamed is None:
        raise ValueError(f"no fairseq2 key for {key}")
    return renamed


# ---------------------------------------------------------------------------------------------
# Top-level layouts and the architecture from the shapes


def _fairseq2_names(weights: Mapping[str, Any]) -> bool:
    return any(
        isinstance(k, str) and k.removeprefix(_MODULE_PREFIX).startswith(("encoder_frontend.", "encoder.layers."))
        for k in weights
    )


def is_fairseq2_state(state: Mapping[str, Any]) -> bool:
    """Whether a `.pt`'s top-level dict is fairseq2's (module docstring), not fairseq's: it names its
    state dict by `model_key`, or is (or holds as `model`, without fairseq's `cfg` or `args`) a state
    dict whose keys are fairseq2's module names."""
    if "model_key" in state:
        return True
    if "cfg" in state or "args" in state:
        return False
    inner = state.get("model")
    return _fairseq2_names(inner if isinstance(inner, dict) else state)


def fairseq2_state_dict_of(state: Mapping[str, Any], path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """The state dict (keys without DDP's `module.` prefix) and the layout's name ("model_key",
    "model" or "bare") of a fairseq2 file's top-level dict. Raises a ValueError naming what is not a tensor."""
    if "model_key" in state:
        model_key = state["model_key"]
        if not isinstance(model_key, str) or not isinstance(state.get(model_key), dict):
            raise ValueError(f"{path}: model_key {model_key!r} does not name a state dict; entries: {sorted(state)}")
        weights, layout = state[model_key], "model_key"
    elif isinstance(state.get("model"), dict):  # fairseq2's converter takes `model` when there is one
        weights, layout = state["model"], "model"
    else:
        weights, layout = state, "bare"
    not_tensors = [k for k, v in weights.items() if not isinstance(v, np.ndarray)]
    if not_tensors:
        raise ValueError(f"{path}: not a fairseq2 state dict of tensors: {not_tensors[:5]} hold other values")
    prefixed = all(k.startswith(_MODULE_PREFIX) for k in weights)
    return {(k[len(_MODULE_PREFIX) :] if prefixed else k): v for k, v in weights.items()}, layout


_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_CONV = re.compile(r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.conv\.weight$")


def _signature(shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    """What a fairseq2 state dict's shapes say of its architecture (`_config_signature` of the
    config that builds it): the family, the conv stack (channels and kernels, bias, norm), the
    Transformer (depth, width, FFN, norm order, positional conv), the quantizer's codewords and the
    final dims; a CTC head's width without its vocabulary. Neither the attention heads nor the conv
    strides show in shapes."""

    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(shapes[key]) if key in shapes else None

    pretraining = "quantizer.entries" in shapes
    convs = sorted((int(m.group(1)), shapes[k]) for k in shapes if (m := _CONV.match(k)))
    first = "encoder_frontend.feature_extractor.layers.0."
    head = shape("final_proj.weight")
    return (
        pretraining,
        tuple((s[0], s[-1]) for _, s in convs),
        first + "conv.bias" in shapes,
        "group" if first + "group_norm.weight" in shapes else "layer",
        len({m.group(1) for k in shapes if (m := _LAYER.match(k))}),
        shape("encoder.layers.0.self_attn.q_proj.weight"),
        shape("encoder.layers.0.ffn.inner_proj.weight"),
        "encoder.layer_norm.weight" in shapes,
        shape("encoder_frontend.pos_encoder.conv.weight_v"),
        shape("quantizer.entries"),
        shape("final_target_proj.weight"),
        head if pretraining or head is None else head[1:],
    )


def _config_signature(config: Wav2Vec2Config, *, ctc: bool) -> tuple:
    """`_signature` of the fairseq2 state dict of `config`'s pretraining or (`ctc`) CTC model."""
    hidden, groups = config.hidden_size, config.num_codevector_groups
    return (
        not ctc,
        tuple(zip(config.conv_dim, config.conv_kernel)),
        config.conv_bias,
        config.feat_extract_norm,
        config.num_hidden_layers,
        (hidden, hidden),
        (config.intermediate_size, hidden),
        config.do_stable_layer_norm,
        (hidden, hidden // config.num_conv_pos_embedding_groups, config.num_conv_pos_embeddings),
        None if ctc else (1, groups * config.num_codevectors_per_group, config.codevector_dim // groups),
        None if ctc else (config.proj_codevector_dim, config.codevector_dim),
        (hidden,) if ctc else (config.proj_codevector_dim, hidden),
    )


def _preset_with(signature: tuple, vocab_size: int) -> str | None:
    """The first preset of this signature, preferring one of this CTC vocabulary size; or None."""
    matches = [
        name
        for name, preset in PRESETS.items()
        if _config_signature(preset.config, ctc=preset.family == ASR_FAMILY) == signature
    ]
    exact = [name for name in matches if PRESETS[name].config.vocab_size == vocab_size]
    found = exact or matches
    return found[0] if found else None


def detect_preset(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The name of the preset (`PRESETS`) whose model has these fairseq2 keys' shapes (a CTC head of
    any vocabulary size; where several share the shapes, the one of the head's vocabulary size, else
    the first listed), or None."""
    return _preset_with(_signature(shapes), shapes.get("final_proj.weight", (0,))[0])


def _arch_config(preset: Fairseq2Preset, shapes: Mapping[str, tuple[int, ...]]) -> Wav2Vec2Config:
    """A preset's config with the file's CTC vocabulary size and, where the file has no mask
    embedding (Omnilingual's CTC models), no masking."""
    config = preset.config
    if preset.family == ASR_FAMILY and "final_proj.weight" in shapes:
        config = config.replace(vocab_size=int(shapes["final_proj.weight"][0]))
    if "masker.temporal_mask_embed" not in shapes and config.mask_time_prob > 0:
        config = config.replace(mask_time_prob=0.0)
    return config


def fairseq2_preset_of(config: Wav2Vec2Config, *, ctc: bool) -> str | None:
    """The preset whose model has the shapes of `config`'s pretraining or (`ctc`) CTC model, or None."""
    return _preset_with(_config_signature(config, ctc=ctc), config.vocab_size)


# ---------------------------------------------------------------------------------------------
# A CTC model's vocabulary: the SentencePiece model of its tokenizer card

# SentencePiece's `ModelProto.pieces` (field 1) and, in each `SentencePiece`, `piece` (1), `type` (3).
_PIECES_FIELD, _PIECE_FIELD, _TYPE_FIELD = 1, 1, 3
_UNKNOWN_TYPE = 2
SENTENCEPIECE_WORD_BOUNDARY = "\u2581"  # the piece that starts a word


def _protobuf_fields(data: bytes, source: pathlib.Path) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message: varints as ints, length-delimited
    fields as bytes, fixed-width ones as their raw value (read, never executed)."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if at >= len(data) or shift > 63:
                raise ValueError(f"{source}: not a SentencePiece model (a truncated protobuf varint)")
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if byte < 0x80:
                return value, at

    fields: list[tuple[int, int, int | bytes]] = []
    at = 0
    while at < len(data):
        tag, at = varint(at)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, at = varint(at)
        elif wire == 2:
            length, at = varint(at)
            value, at = data[at : at + length], at + length
            if len(value) != length:
                raise ValueError(f"{source}: not a SentencePiece model (a truncated protobuf field)")
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = int.from_bytes(data[at : at + width], "little"), at + width
        else:
            raise ValueError(f"{source}: not a SentencePiece model (protobuf wire type {wire})")
        fields.append((number, wire, value))
    return fields


def read_sentencepiece_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """The vocabulary of a fairseq2 CTC model from its tokenizer's SentencePiece `.model` (fairseq2's
    `char_tokenizer`, Omnilingual's `omniASR_tokenizer*.model`): id i is piece i (fairseq2 uses the
    raw SentencePiece ids), id 0 the CTC blank, the piece of type UNKNOWN the unknown token, the word
    boundary `\u2581` the word delimiter. The protobuf is parsed here, without sentencepiece."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such SentencePiece model")
    pieces: list[str] = []
    unknown: str | None = None
    for number, wire, value in _protobuf_fields(path.read_bytes(), path):
        if number != _PIECES_FIELD or wire != 2:
            continue
        piece, kind = None, 1
        for field, field_wire, field_value in _protobuf_fields(bytes(value), path):
            if field == _PIECE_FIELD and field_wire == 2:
                piece = bytes(field_value).decode("utf-8")
            elif field == _TYPE_FIELD and field_wire == 0 and isinstance(field_value, int):
                kind = field_value
        if piece is None:
            raise ValueError(f"{path}: SentencePiece piece {len(pieces)} has no text")
        if kind == _UNKNOWN_TYPE and unknown is None:
            unknown = piece
        pieces.append(piece)
    if not pieces or unknown is None:
        raise ValueError(f"{path}: not a SentencePiece model ({len(pieces)} pieces, no unknown piece)")
    return Vocabulary(
        tuple(pieces), pad_token=pieces[0], unk_token=unknown, word_delimiter_token=SENTENCEPIECE_WORD_BOUNDARY
    )


# ---------------------------------------------------------------------------------------------
# Import and export


@dataclasses.dataclass(frozen=True)
class Fairseq2Import:
    """A fairseq2 checkpoint read: the model, the preset it was built as and how it was named,
    the quantizer's update count (None for a CTC model), and what was read and skipped."""

    config: Wav2Vec2Config
    model: Model
    arch: str | None  # the preset of the model's shapes; None: none has them
    arch_source: str  # how the architecture was named ("named from the shapes", "given", ...)
    family: str
    num_updates: int | None  # `quantizer.num_updates`: the Gumbel temperature's position in its schedule
    layout: str  # "model_key" (fairseq2 0.3-0.4), "bare" (0.5+), or "model" (a `model` entry alone)
    parameters: int  # tensors mapped to the model

    @property
    def gumbel_temperature(self) -> float | None:
        """The Gumbel temperature fairseq2 would train with next (its preset's schedule at `num_updates`)."""
        if self.arch is None or self.num_updates is None:
            return None
        schedule = PRESETS[self.arch].codebook_sampling_temperature
        if schedule is None:
            return None
        high, low, decay = schedule
        return max(high * decay**self.num_updates, low)

    def summary(self) -> str:
        """The lines a conversion prints: what was read."""
        updates = "" if self.num_updates is None else f", quantizer.num_updates {self.num_updates}"
        return (
            f"read {type(self.model).__name__} as fairseq2 {self.family} arch {self.arch!r} ({self.arch_source}) "
            f"from the {self.layout!r} layout: {self.parameters} tensors mapped{updates}"
        )


def load_fairseq2_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | Wav2Vec2Config | None = None,
    dtype: jnp.dtype | None = None,
    allow_nonfinite: bool = False,
) -> Fairseq2Import:
    """Reads a fairseq2 wav2vec 2.0 `.pt` (pretraining or CTC, Omnilingual's included) without
    fairseq2 or torch.

    Args:
      path: the `.pt` file.
      arch: the architecture: a preset's name (`PRESETS`) or our config of it (a model of no preset,
        fairseq2's card with config overrides); default the config our exporter stored in the file,
        else the preset the tensors' shapes name.
      dtype: computation dtype of the model (parameters are float32).
      allow_nonfinite: accept NaN or infinite weights.

    Raises a ValueError naming the problem: shapes no preset has (naming `--arch`), an unknown arch,
    keys with no place in the model, a refused pickle global.
    """
    path = pathlib.Path(path)
    return import_fairseq2_state(
        read_torch_checkpoint(path), path, arch=arch, dtype=dtype, allow_nonfinite=allow_nonfinite
    )


def _architecture(
    state: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    arch: str | Wav2Vec2Config | None,
    path: pathlib.Path,
) -> tuple[str | None, str, Wav2Vec2Config]:
    """(preset name or None, how it was named, config) of a fairseq2 file (`load_fairseq2_checkpoint`'s `arch`)."""
    if isinstance(arch, Wav2Vec2Config):
        return fairseq2_preset_of(arch, ctc="quantizer.entries" not in shapes), "given as a config", arch
    if arch is None and isinstance(state.get(CONFIG_ENTRY), dict):
        try:
            config = Wav2Vec2Config.from_hf_dict(state[CONFIG_ENTRY])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: its {CONFIG_ENTRY} entry is not a Wav2Vec2Config: {error}") from None
        return fairseq2_preset_of(config, ctc="quantizer.entries" not in shapes), f"stored in {CONFIG_ENTRY}", config
    if arch is None:
        arch = detect_preset(shapes)
        if arch is None:
            family = PRETRAINING_FAMILY if "quantizer.entries" in shapes else ASR_FAMILY
            raise ValueError(
                f"{path}: its tensors' shapes match no fairseq2 {family} preset ({', '.join(PRESETS)}); "
                "name its architecture with --arch (a preset or a config.json)"
            )
        how = "named from the shapes"
    elif arch not in PRESETS:
        raise ValueError(f"unknown fairseq2 arch {arch!r}; choose one of {', '.join(PRESETS)} or give a config")
    else:
        how = "given"
    preset = PRESETS[arch]
    if (preset.family == ASR_FAMILY) == ("quantizer.entries" in shapes):
        held = (
            "a CTC model (no quantizer)" if preset.family == PRETRAINING_FAMILY else "a pretraining model (a quantizer)"
        )
        raise ValueError(f"{path}: fairseq2 arch {arch!r} is a {preset.family} model, but the file holds {held}")
    return arch, how, _arch_config(preset, shapes)


def import_fairseq2_state(
    state: Mapping[str, Any],
    path: pathlib.Path,
    *,
    arch: str | Wav2Vec2Config | None = None,
    dtype: jnp.dtype | None = None,
    allow_nonfinite: bool = False,
) -> Fairseq2Import:
    """`load_fairseq2_checkpoint` of a file already read (`torch_files.read_torch_checkpoint`):
    `state` is its top-level dict, `path` where it was read (for messages)."""
    weights, layout = fairseq2_state_dict_of(state, path)
    shapes = {k: tuple(np.shape(v)) for k, v in weights.items()}
    name, how, config = _architecture(state, shapes, arch, path)
    ctc = "quantizer.entries" not in shapes
    num_updates = None
    hf_state, unknown = {}, []
    for key, value in weights.items():
        if key == NUM_UPDATES_KEY and not ctc:
            num_updates = int(np.asarray(value))
            continue
        hf_name = fairseq2_to_hf_key(key, norm=config.feat_extract_norm, pre_ln=config.do_stable_layer_norm, ctc=ctc)
        if hf_name is None:
            unknown.append(key)
        else:
            hf_state[hf_name] = np.asarray(value, np.float32)
    if unknown:
        raise ValueError(f"{path}: fairseq2 keys with no place in the model: {unknown}")
    cls = Wav2Vec2ForCTC if ctc else Wav2Vec2ForPreTraining
    try:
        model = model_from_hf(config, hf_state, cls, path, dtype=dtype, allow_nonfinite=allow_nonfinite)
    except ValueError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise ValueError(f"{path}: as fairseq2 arch {name or 'of the config'}: {reason}") from None
    return Fairseq2Import(
        config=config,
        model=model,
        arch=name,
        arch_source=how,
        family=ASR_FAMILY if ctc else PRETRAINING_FAMILY,
        num_updates=num_updates,
        layout=layout,
        parameters=len(hf_state),
    )


def fairseq2_state_dict(model: Model, *, num_updates: int = 0) -> dict[str, np.ndarray]:
    """A `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC` -> fairseq2's state dict (float32 arrays; a
    pretraining model's `quantizer.num_updates` an int64 scalar)."""
    if not isinstance(model, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
        raise ValueError(
            f"fairseq2's checkpoints hold a pretraining or CTC model, not a {type(model).__name__} "
            "(a bare encoder has no quantizer for fairseq2's Wav2Vec2Model)"
        )
    ctc = isinstance(model, Wav2Vec2ForCTC)
    config = model.config
    # fairseq2 builds a CTC model's mask embedding only when it masks (`use_masking`).
    hf = params_to_hf(nnx.state(model, nnx.Param), config if ctc else None)
    out = {
        hf_to_fairseq2_key(k, norm=config.feat_extract_norm, pre_ln=config.do_stable_layer_norm, ctc=ctc): v
        for k, v in hf.items()
    }
    if not ctc:
        out[NUM_UPDATES_KEY] = np.asarray(num_updates, np.int64)
    return out


def save_fairseq2_checkpoint(model: Model, path: str | os.PathLike, *, num_updates: int = 0) -> str | None:
    """Writes `model` as a fairseq2 `.pt` that fairseq2 0.8.1 loads (module docstring); needs torch
    (the `reference` extra).

    Args:
      model: a `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC`.
      path: the `.pt` file.
      num_updates: a pretraining model's `quantizer.num_updates` (the Gumbel temperature's step).

    Returns:
      The fairseq2 preset of the model's shapes (its card's `model_arch`), or None when none has them.
    """
    torch = import_reference("torch", "writing a fairseq2 checkpoint")
    if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 0:
        raise ValueError(f"num_updates must be an int >= 0, got {num_updates!r}")
    weights = fairseq2_state_dict(model, num_updates=num_updates)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
        "model_key": "model",
        CONFIG_ENTRY: model.config.to_hf_dict(),
    }
    torch.save(state, path)
    return fairseq2_preset_of(model.config, ctc=isinstance(model, Wav2Vec2ForCTC))
