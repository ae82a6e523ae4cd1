"""fairseq's wav2vec 2.0 checkpoints (`.pt`), both directions, without fairseq, hydra or omegaconf.

Reading needs no torch either: a fairseq `.pt` is a `torch.save`d dict, read by
`torch_files.read_torch_checkpoint` (tensors as NumPy arrays, the `args` Namespace and the hydra
`cfg` as dicts, nothing else unpickled).

Import (`load_fairseq_checkpoint`): fairseq's `Wav2Vec2Model` (pretraining) and `Wav2VecCtc`
(CTC fine-tuned, `w2v_encoder.w2v_model.*` + `w2v_encoder.proj`), configured by the old `args`
Namespace or a hydra `cfg`. Every model field fairseq reads is mapped to a `Wav2Vec2Config` field
(`_config_from_fields`) or refused by name when it selects something we don't implement
(`_UNSUPPORTED`). Keys map to transformers' names (`_MODULES`, the converter's table) and go through
`hf.params_from_hf`. The optimizer state, EMA and other extra state are skipped (`FairseqImport`
lists them). A CTC head's vocabulary is fairseq's `dict.ltr.txt` with `<s>`, `<pad>`, `</s>`,
`<unk>` first and `<s>` (id 0) the blank (`audio_finetuning`'s `blank_symbol`); transformers' and our
vocabularies keep the ids and name id 0 `<pad>` (the blank) and id 1 `<s>`.

Export (`save_fairseq_checkpoint`, needs torch: the `reference` extra): `torch.save` of a dict with
`model` (fairseq's keys), a hydra-style `cfg` of plain dicts (`checkpoint_utils.load_checkpoint_to_cpu`
turns it into a DictConfig), `optimizer_history` and `extra_state` as `_upgrade_state_dict` expects;
a CTC model's `dict.ltr.txt` is written beside it and `cfg.task.data` names its folder.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.checkpoints.hf import model_from_hf, params_to_hf
from w2v_jax.checkpoints.torch_files import read_torch_checkpoint
from w2v_jax.checkpoints.weights import Model
from w2v_jax.config import ACTIVATIONS, Wav2Vec2Config
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.vocabulary import BOS, EOS, PAD, UNK, Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.reference import import_reference

DICT_FILE = "dict.ltr.txt"
# fairseq's Dictionary puts these first (ids 0..3); `<s>` is the CTC blank.
FAIRSEQ_SPECIALS = (BOS, PAD, EOS, UNK)

# ---------------------------------------------------------------------------------------------
# fairseq's hydra configs

_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")
# How deeply a config may nest, interpolations followed included (fairseq's: under 10 levels).
_MAX_CONFIG_DEPTH = 100


def _resolve(value: Any, root: Mapping[str, Any]) -> Any:
    """OmegaConf's `${a.b}` interpolations (fairseq's `II("task.normalize")`) resolved against `root`.

    A node reached twice (shared, or named by several interpolations) is resolved once and shared, so
    the result is never larger than the config. An interpolation that leads back to itself, or nesting
    deeper than `_MAX_CONFIG_DEPTH`, raises a ValueError naming it."""
    resolved: dict[int, Any] = {}

    def walk(value: Any, depth: int, chain: tuple[str, ...]) -> Any:
        if depth > _MAX_CONFIG_DEPTH:
            raise ValueError(f"the config nests deeper than {_MAX_CONFIG_DEPTH} levels (interpolations followed)")
        if isinstance(value, dict | list):
            if id(value) not in resolved:
                items = value.items() if isinstance(value, dict) else enumerate(value)
                walked = {k: walk(v, depth + 1, chain) for k, v in items}
                resolved[id(value)] = walked if isinstance(value, dict) else list(walked.values())
            return resolved[id(value)]
        if isinstance(value, str) and (match := _INTERPOLATION.match(value)):
            target = match.group(1)
            if target in chain:
                cycle = " -> ".join(f"${{{name}}}" for name in (*chain[chain.index(target) :], target))
                raise ValueError(f"the config's interpolations form a cycle: {cycle}")
            node: Any = root
            for part in target.split("."):
                if not isinstance(node, dict) or part not in node:
                    return value
                node = node[part]
            return walk(node, depth + 1, (*chain, target))
        return None if value == "???" else value

    return walk(value, 0, ())


# ---------------------------------------------------------------------------------------------
# fairseq's model fields <-> Wav2Vec2Config

# fairseq's `Wav2Vec2Config` defaults of the fields read here (fairseq/models/wav2vec/wav2vec2.py),
# for checkpoints older than a field.
_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "final_dim": 0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False,
    "logit_temp": 0.1,
    "quantize_targets": False,
    "quantize_input": False,
    "same_quantizer": False,
    "target_glu": False,
    "feature_grad_mult": 1.0,
    "quantizer_depth": 1,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "mask_length": 10,
    "mask_prob": 0.65,
    "mask_selection": "static",
    "no_mask_overlap": False,
    "mask_dropout": 0.0,
    "mask_channel_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_before": False,
    "mask_channel_selection": "static",
    "no_mask_channel_overlap": False,
    "num_negatives": 100,
    "negatives_from_everywhere": False,
    "cross_sample_negatives": 0,
    "codebook_negatives": 0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "pos_conv_depth": 1,
    "attn_type": "",
    "pos_enc_type": "abs",
    "adp_num": -1,
}
# Fields that select something we don't implement: the only value we read.
_UNSUPPORTED: dict[str, Any] = {
    "layer_type": "transformer",  # conformer layers
    "quantize_input": False,
    "target_glu": False,
    "quantizer_depth": 1,
    "negatives_from_everywhere": False,
    "cross_sample_negatives": 0,
    "codebook_negatives": 0,
    "pos_conv_depth": 1,
    "attn_type": "",
    "pos_enc_type": "abs",
    "mask_selection": "static",
    "mask_channel_selection": "static",
    "no_mask_overlap": False,
    "no_mask_channel_overlap": False,
    "mask_channel_before": False,
    "mask_dropout": 0.0,
}
# Fields of a fine-tuning config (Wav2Vec2AsrConfig) that override the pretraining model's
# (Wav2VecEncoder's arg_overrides), by their pretraining names.
_FINETUNING_OVERRIDES = {
    "dropout": "dropout",
    "activation_dropout": "activation_dropout",
    "dropout_input": "dropout_input",
    "attention_dropout": "attention_dropout",
    "mask_length": "mask_length",
    "mask_prob": "mask_prob",
    "mask_selection": "mask_selection",
    "no_mask_overlap": "no_mask_overlap",
    "mask_channel_length": "mask_channel_length",
    "mask_channel_prob": "mask_channel_prob",
    "mask_channel_before": "mask_channel_before",
    "mask_channel_selection": "mask_channel_selection",
    "no_mask_channel_overlap": "no_mask_channel_overlap",
    "layerdrop": "encoder_layerdrop",
    "feature_grad_mult": "feature_grad_mult",
}


# Bounds of a `conv_feature_layers` spec: real models' have 7 layers, all have fewer than 20.
_MAX_CONV_LAYERS = 64
_MAX_CONV_SPEC = 1000  # characters
_MAX_CONV_DEPTH = 20  # nested operations


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string (a Python expression of lists of (dim, kernel, stride)
    tuples joined by + and repeated by *), evaluated without `eval` and within bounds: a list of at
    most `_MAX_CONV_LAYERS` layers is ever built, so a huge repeat count is refused before it is used."""
    bad = f"conv_feature_layers {spec[:100]!r} is not a list of (dim, kernel, stride) tuples"

    def value(node: ast.AST, depth: int) -> Any:
        if depth > _MAX_CONV_DEPTH:
            raise ValueError(f"{bad}: nested deeper than {_MAX_CONV_DEPTH} operations")
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [value(e, depth + 1) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left, depth + 1), value(node.right, depth + 1)
            if isinstance(node.op, ast.Add):
                if type(left) is not type(right):
                    raise ValueError(bad)
                result = left + right
            else:
                items, count = (right, left) if isinstance(left, int) else (left, right)
                if not isinstance(count, int):
                    raise ValueError(bad)
                # The size of what the product builds, checked before it is built.
                if isinstance(items, list | tuple) and not 0 <= len(items) * count <= _MAX_CONV_LAYERS:
                    raise ValueError(f"{bad}: repeats {len(items)} items {count} times (at most {_MAX_CONV_LAYERS})")
                result = items * count
            if isinstance(result, int) and abs(result) >= 2**31:
                raise ValueError(f"{bad}: {result} is out of range")
            if isinstance(result, list | tuple) and len(result) > _MAX_CONV_LAYERS:
                raise ValueError(f"{bad}: more than {_MAX_CONV_LAYERS} items")
            return result
        raise ValueError(bad)

    if not isinstance(spec, str) or len(spec) > _MAX_CONV_SPEC:
        raise ValueError(f"conv_feature_layers is not a string of at most {_MAX_CONV_SPEC} characters")
    try:
        tree = ast.parse(spec, mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        raise ValueError(bad) from None
    layers = value(tree, 0)
    if not isinstance(layers, list) or not all(
        isinstance(t, tuple) and len(t) == 3 and all(isinstance(n, int) for n in t) for t in layers
    ):
        raise ValueError(bad)
    return layers


def _config_from_fields(
    model: Mapping[str, Any], criterion: Mapping[str, Any], finetuning: Mapping[str, Any] | None, vocab_size: int
) -> Wav2Vec2Config:
    """fairseq's pretraining model fields (+ the criterion's loss weights, + a fine-tuning config's
    overrides) -> our config. Raises a ValueError naming an unsupported field."""
    fields = {**_FAIRSEQ_DEFAULTS, **{k: v for k, v in model.items() if v is not None}}
    if finetuning is not None:
        for name, target in _FINETUNING_OVERRIDES.items():
            if finetuning.get(name) is not None:
                fields[target] = finetuning[name]
        if finetuning.get("adp_num") not in (None, -1, 0):
            raise ValueError(f"fine-tuning field adp_num={finetuning['adp_num']} (adapters) is not supported")
        if finetuning.get("blank_weight") not in (None, 0, 0.0):
            raise ValueError(f"fine-tuning field blank_weight={finetuning['blank_weight']} is not supported (only 0)")
        if finetuning.get("layer_type") not in (None, "transformer"):
            raise ValueError(f"fine-tuning field layer_type={finetuning['layer_type']!r} is not supported")
    for name, supported in _UNSUPPORTED.items():
        if fields[name] != supported:
            raise ValueError(f"fairseq field {name}={fields[name]!r} is not supported (only {supported!r})")
    if fields["adp_num"] not in (-1, 0):
        raise ValueError(f"fairseq field adp_num={fields['adp_num']} (adapters) is not supported")
    if model.get("encoder_layers_to_keep"):
        raise ValueError(f"fairseq field encoder_layers_to_keep={model['encoder_layers_to_keep']!r} is not supported")
    if finetuning is None and not fields["quantize_targets"]:
        raise ValueError("fairseq field quantize_targets=False is not supported: the targets are the quantizer's")
    if fields["activation_fn"] not in ACTIVATIONS:
        raise ValueError(f"fairseq field activation_fn={fields['activation_fn']!r} is not supported ({ACTIVATIONS})")
    if fields["extractor_mode"] not in ("default", "layer_norm"):
        raise ValueError(f"fairseq field extractor_mode={fields['extractor_mode']!r} is not supported")
    conv = _conv_layers(fields["conv_feature_layers"])
    if conv[-1][0] == fields["encoder_embed_dim"]:
        raise ValueError("fairseq models without post_extract_proj (conv dim == encoder_embed_dim) are not supported")
    final_dim = fields["final_dim"] if fields["final_dim"] > 0 else fields["encoder_embed_dim"]
    weights = criterion.get("loss_weights") or (0.0, 0.0)
    apply_mask = finetuning is None or finetuning.get("apply_mask", True)
    values = dict(
        conv_dim=tuple(c[0] for c in conv),
        conv_kernel=tuple(c[1] for c in conv),
        conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(fields["conv_bias"]),
        feat_extract_norm="group" if fields["extractor_mode"] == "default" else "layer",
        hidden_size=fields["encoder_embed_dim"],
        num_hidden_layers=fields["encoder_layers"],
        num_attention_heads=fields["encoder_attention_heads"],
        intermediate_size=fields["encoder_ffn_embed_dim"],
        hidden_act=fields["activation_fn"],
        hidden_dropout=fields["dropout"],
        activation_dropout=fields["activation_dropout"],
        attention_dropout=fields["attention_dropout"],
        feat_proj_dropout=fields["dropout_input"],
        feat_quantizer_dropout=fields["dropout_features"],
        layerdrop=fields["encoder_layerdrop"],
        do_stable_layer_norm=bool(fields["layer_norm_first"]),
        num_conv_pos_embeddings=fields["conv_pos"],
        num_conv_pos_embedding_groups=fields["conv_pos_groups"],
        mask_time_prob=fields["mask_prob"] if apply_mask else 0.0,
        mask_time_length=fields["mask_length"],
        mask_time_min_masks=2,  # Wav2Vec2Model.apply_mask's min_masks
        mask_feature_prob=fields["mask_channel_prob"] if apply_mask else 0.0,
        mask_feature_length=fields["mask_channel_length"],
        num_codevector_groups=fields["latent_groups"],
        num_codevectors_per_group=fields["latent_vars"],
        codevector_dim=fields["latent_dim"] if fields["latent_dim"] > 0 else final_dim,
        proj_codevector_dim=final_dim,
        contrastive_logits_temperature=fields["logit_temp"],
        num_negatives=fields["num_negatives"],
        diversity_loss_weight=float(weights[0]) if len(weights) > 0 else 0.0,
        feature_penalty_weight=float(weights[1]) if len(weights) > 1 else 0.0,
        feature_grad_mult=fields["feature_grad_mult"],
        vocab_size=vocab_size,
        pad_token_id=0,
    )
    if finetuning is not None:
        values["final_dropout"] = finetuning.get("final_dropout", 0.0) or 0.0
        values["ctc_zero_infinity"] = bool(criterion.get("zero_infinity", False))
    return Wav2Vec2Config(**values)


def _model_fields(config: Wav2Vec2Config) -> dict[str, Any]:
    """Our config -> fairseq's `Wav2Vec2Config` fields (the `wav2vec2` model of a hydra `cfg`)."""
    conv = [(d, k, s) for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride)]
    return {
        "_name": "wav2vec2",
        "extractor_mode": "default" if config.feat_extract_norm == "group" else "layer_norm",
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": config.hidden_act,
        "dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "encoder_layerdrop": config.layerdrop,
        "dropout_input": config.feat_proj_dropout,
        "dropout_features": config.feat_quantizer_dropout,
        "final_dim": config.proj_codevector_dim,
        "layer_norm_first": config.do_stable_layer_norm,
        "conv_feature_layers": repr(conv),
        "conv_bias": config.conv_bias,
        "logit_temp": config.contrastive_logits_temperature,
        "quantize_targets": True,
        "quantize_input": False,
        "feature_grad_mult": config.feature_grad_mult,
        "latent_vars": config.num_codevectors_per_group,
        "latent_groups": config.num_codevector_groups,
        "latent_dim": config.codevector_dim,
        "mask_length": config.mask_time_length,
        "mask_prob": config.mask_time_prob,
        "mask_channel_length": config.mask_feature_length,
        "mask_channel_prob": config.mask_feature_prob,
        "num_negatives": config.num_negatives,
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
    }


# ---------------------------------------------------------------------------------------------
# fairseq's keys <-> transformers' keys (transformers' converter's table)

# (fairseq module, transformers module) of the encoder; `{i}` is a layer index. The conv layers'
# norm sits at index 2 of each conv block: a GroupNorm (layer 0 only, "default" mode) or a
# Sequential(TransposeLast, LayerNorm, TransposeLast) ("layer_norm" mode).
_MODULES = (
    ("feature_extractor.conv_layers.{i}.0", "feature_extractor.conv_layers.{i}.conv"),
    ("post_extract_proj", "feature_projection.projection"),
    ("layer_norm", "feature_projection.layer_norm"),
    ("encoder.pos_conv.0", "encoder.pos_conv_embed.conv"),
    ("encoder.layers.{i}.self_attn.q_proj", "encoder.layers.{i}.attention.q_proj"),
    ("encoder.layers.{i}.self_attn.k_proj", "encoder.layers.{i}.attention.k_proj"),
    ("encoder.layers.{i}.self_attn.v_proj", "encoder.layers.{i}.attention.v_proj"),
    ("encoder.layers.{i}.self_attn.out_proj", "encoder.layers.{i}.attention.out_proj"),
    ("encoder.layers.{i}.self_attn_layer_norm", "encoder.layers.{i}.layer_norm"),
    ("encoder.layers.{i}.fc1", "encoder.layers.{i}.feed_forward.intermediate_dense"),
    ("encoder.layers.{i}.fc2", "encoder.layers.{i}.feed_forward.output_dense"),
    ("encoder.layers.{i}.final_layer_norm", "encoder.layers.{i}.final_layer_norm"),
    ("encoder.layer_norm", "encoder.layer_norm"),
)
_CONV_NORM = {
    "group": ("feature_extractor.conv_layers.{i}.2", "feature_extractor.conv_layers.{i}.layer_norm"),
    "layer": ("feature_extractor.conv_layers.{i}.2.1", "feature_extractor.conv_layers.{i}.layer_norm"),
}
# Modules outside the encoder, at the top level in both.
_HEADS = (
    ("quantizer.weight_proj", "quantizer.weight_proj"),
    ("project_q", "project_q"),
    ("final_proj", "project_hid"),
)
_PARAMETERS = {"mask_emb": "masked_spec_embed", "quantizer.vars": "quantizer.codevectors"}
_CTC_ENCODER, _CTC_HEAD = "w2v_encoder.w2v_model.", "w2v_encoder.proj"
# Pretraining modules a fine-tuned model leaves unused (fairseq's remove_pretraining_modules).
_PRETRAINING_ONLY = re.compile(r"^(quantizer|project_q|final_proj|target_glu|project_inp)\.")
# transformers' weight-norm parameter names (torch's parametrizations) -> the older ones fairseq and
# fairseq2 write.
HF_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def _module_pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"\.(?P<attr>[A-Za-z_]\w*)$")


def rename_module(key: str, pairs: tuple[tuple[str, str], ...], reverse: bool) -> str | None:
    """`key` (`module.attr`) renamed by the first of `pairs` (source module, target module) whose
    module it is in (target to source when `reverse`); `{i}` in a module stands for a layer index.
    None when no pair's module holds it."""
    for fairseq_module, hf_module in pairs:
        source, target = (hf_module, fairseq_module) if reverse else (fairseq_module, hf_module)
        if match := _module_pattern(source).match(key):
            return target.replace("{i}", match.groupdict().get("i") or "") + "." + match.group("attr")
    return None


def _encoder_pairs(norm: str) -> tuple[tuple[str, str], ...]:
    return (*_MODULES, _CONV_NORM[norm])


def fairseq_to_hf_key(key: str, norm: str) -> str | None:
    """transformers' key of a fairseq `Wav2Vec2Model`/`Wav2VecCtc` key (None: not a model parameter
    we read); `norm` is the feature encoder's ("group" or "layer")."""
    if key == _CTC_HEAD + ".weight" or key == _CTC_HEAD + ".bias":
        return "lm_head." + key.rsplit(".", 1)[1]
    inner = key[len(_CTC_ENCODER) :] if key.startswith(_CTC_ENCODER) else key
    name: str | None
    if inner in _PARAMETERS:
        name = _PARAMETERS[inner]
        return name if name.startswith("quantizer.") else f"wav2vec2.{name}"
    if (name := rename_module(inner, _HEADS, reverse=False)) is not None:
        return name
    name = rename_module(inner, _encoder_pairs(norm), reverse=False)
    return None if name is None else f"wav2vec2.{name}"


def hf_to_fairseq_key(key: str, norm: str, ctc: bool) -> str:
    """fairseq's key of a transformers key of `Wav2Vec2ForPreTraining` (`ctc=False`) or `Wav2Vec2ForCTC`."""
    for long, short in HF_WEIGHT_NORM.items():
        key = key.replace(long, short)
    if key.startswith("lm_head."):
        return _CTC_HEAD + key[len("lm_head") :]
    prefix = _CTC_ENCODER if ctc else ""
    inner = key.removeprefix("wav2vec2.")
    name: str | None
    for fairseq_name, name in _PARAMETERS.items():
        if inner == name:
            return fairseq_name if name.startswith("quantizer.") else prefix + fairseq_name
    name = rename_module(inner, _HEADS, reverse=True) if not key.startswith("wav2vec2.") else None
    name = name or rename_module(inner, _encoder_pairs(norm), reverse=True)
    if name is None:
        raise ValueError(f"no fairseq key for {key}")
    return name if not key.startswith("wav2vec2.") else prefix + name


# ---------------------------------------------------------------------------------------------
# fairseq's dictionary <-> our vocabulary


def read_fairseq_dictionary(path: str | os.PathLike) -> Vocabulary:
    """fairseq's `dict.ltr.txt` ("symbol count [#fairseq:overwrite]" lines after the specials
    `<s>`, `<pad>`, `</s>`, `<unk>`) -> our vocabulary with the same ids; id 0 (fairseq's `<s>`, the
    CTC blank) is named `<pad>` and id 1 `<s>`, as transformers' converter does."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such dictionary file")
    symbols = list(FAIRSEQ_SPECIALS)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.rstrip().rsplit(" ", 2 if line.rstrip().endswith("#fairseq:overwrite") else 1)
        if number == 1 and line.startswith("#"):  # fairseq's optional metadata line
            continue
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<symbol> <count>', got {line!r}")
        overwrite = len(fields) == 3
        if fields[0] in symbols and not overwrite:
            raise ValueError(f"{path}:{number}: symbol {fields[0]!r} repeated")
        if fields[0] not in symbols:
            symbols.append(fields[0])
    return Vocabulary((PAD, BOS, *symbols[2:]))


def write_fairseq_dictionary(vocabulary: Vocabulary, path: str | os.PathLike) -> None:
    """Our vocabulary -> fairseq's `dict.ltr.txt` (same ids). Its first tokens must be `<pad>`
    (the blank), `<s>`, `</s>`, `<unk>`, the places fairseq's Dictionary gives its specials."""
    if vocabulary.tokens[:4] != (PAD, BOS, EOS, UNK) or vocabulary.pad_id != 0:
        raise ValueError(
            f"fairseq's dictionary starts with its specials; this vocabulary starts {vocabulary.tokens[:4]}, "
            f"not {(PAD, BOS, EOS, UNK)}"
        )
    lines = [f"{token} 1" for token in vocabulary.tokens[4:]]
    pathlib.Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Import and export


@dataclasses.dataclass(frozen=True)
class FairseqImport:
    """A fairseq checkpoint read: the model, its vocabulary (CTC), whether fairseq normalised its
    inputs (`task.normalize`), and what was read and skipped."""

    config: Wav2Vec2Config
    model: Model
    vocabulary: Vocabulary | None
    normalize: bool
    config_style: str  # "args" (argparse Namespace) or "cfg" (hydra)
    parameters: int  # tensors mapped to the model
    skipped_parameters: tuple[str, ...]  # model tensors left out (pretraining modules of a CTC model)
    skipped_entries: tuple[str, ...]  # top-level entries besides the model and its config

    def summary(self) -> str:
        """The lines a conversion prints: what was read and what skipped."""
        return "\n".join(
            [
                f"read {type(self.model).__name__} from the {self.config_style!r} config: "
                f"{self.parameters} tensors mapped, input normalisation {self.normalize}",
                f"skipped model tensors: {list(self.skipped_parameters) or 'none'}",
                f"skipped checkpoint entries: {list(self.skipped_entries) or 'none'}",
            ]
        )


def _sections(state: Mapping[str, Any]) -> tuple[str, dict, dict, dict, dict | None]:
    """(config style, pretraining model fields, criterion fields, task fields, fine-tuning fields or None)."""
    if state.get("cfg"):
        style, cfg = "cfg", _resolve(state["cfg"], state["cfg"])
        model, criterion, task = cfg.get("model") or {}, cfg.get("criterion") or {}, cfg.get("task") or {}
        name = model.get("_name")
    elif state.get("args"):
        style, args = "args", state["args"]
        model = criterion = task = args
        name = args.get("arch")
    else:
        raise ValueError("the checkpoint has neither `cfg` nor `args`: its model is unknown")
    if name in ("wav2vec_ctc",) or "w2v_args" in model:
        if name not in (None, "wav2vec_ctc"):
            raise ValueError(f"fairseq model {name!r} is not supported (wav2vec2, wav2vec_ctc)")
        inner = model.get("w2v_args")
        if not isinstance(inner, dict):
            raise ValueError("the fine-tuned checkpoint has no w2v_args (its pretraining model's config)")
        inner = _resolve(inner, inner)
        if "model" in inner:
            return style, inner["model"], criterion, task, model
        return style, inner, criterion, task, model
    if name not in ("wav2vec2",):
        raise ValueError(f"fairseq model {name!r} is not supported (wav2vec2, wav2vec_ctc)")
    return style, model, criterion, task, None


def load_fairseq_checkpoint(
    path: str | os.PathLike,
    dictionary: str | os.PathLike | None = None,
    *,
    dtype: jnp.dtype | None = None,
    allow_nonfinite: bool = False,
) -> FairseqImport:
    """Reads a fairseq wav2vec 2.0 `.pt` (pretraining or CTC fine-tuned) without fairseq or torch.

    Args:
      path: the `.pt` file.
      dictionary: a CTC model's `dict.ltr.txt`; default the one beside `path`. Without one, the
        vocabulary is None.
      dtype: computation dtype of the model (parameters are float32).
      allow_nonfinite: accept NaN or infinite weights.

    Raises a ValueError naming the problem: an unsupported model or field, unknown keys, a refused
    pickle global, a dictionary whose size is not the head's.
    """
    path = pathlib.Path(path)
    return import_fairseq_state(
        read_torch_checkpoint(path), path, dictionary, dtype=dtype, allow_nonfinite=allow_nonfinite
    )


def import_fairseq_state(
    state: Mapping[str, Any],
    path: pathlib.Path,
    dictionary: str | os.PathLike | None = None,
    *,
    dtype: jnp.dtype | None = None,
    allow_nonfinite: bool = False,
) -> FairseqImport:
    """`load_fairseq_checkpoint` of a file already read (`torch_files.read_torch_checkpoint`):
    `state` is its top-level dict, `path` where it was read (for messages and the dictionary)."""
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path}: no `model` state dict; entries: {sorted(state)}")
    style, model_fields, criterion, task, finetuning = _sections(state)
    weights = state["model"]
    ctc = finetuning is not None
    vocab_size = int(np.shape(weights[_CTC_HEAD + ".weight"])[0]) if ctc and _CTC_HEAD + ".weight" in weights else 32
    try:
        config = _config_from_fields(model_fields, criterion, finetuning, vocab_size)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    hf_state, skipped, unknown = {}, [], []
    for key, value in weights.items():
        name = fairseq_to_hf_key(key, config.feat_extract_norm)
        if ctc and _PRETRAINING_ONLY.match(key.removeprefix(_CTC_ENCODER)):
            skipped.append(key)
        elif name is None or not isinstance(value, np.ndarray):
            unknown.append(key)
        else:
            hf_state[name] = np.asarray(value, np.float32)
    if unknown:
        raise ValueError(f"{path}: fairseq keys with no place in the model: {unknown}")
    cls = Wav2Vec2ForCTC if ctc else Wav2Vec2ForPreTraining
    model = model_from_hf(config, hf_state, cls, path, dtype=dtype, allow_nonfinite=allow_nonfinite)
    vocabulary = None
    if ctc:
        dictionary = pathlib.Path(dictionary) if dictionary is not None else path.parent / DICT_FILE
        if dictionary.is_file():
            vocabulary = read_fairseq_dictionary(dictionary)
            if len(vocabulary) != config.vocab_size:
                raise ValueError(
                    f"{dictionary} gives {len(vocabulary)} symbols with fairseq's 4 specials, "
                    f"the checkpoint's head {config.vocab_size} outputs"
                )
    return FairseqImport(
        config=config,
        model=model,
        vocabulary=vocabulary,
        normalize=bool(task.get("normalize", finetuning.get("normalize", False) if finetuning is not None else False)),
        config_style=style,
        parameters=len(hf_state),
        skipped_parameters=tuple(skipped),
        skipped_entries=tuple(sorted(k for k in state if k not in ("model", "cfg", "args"))),
    )


def fairseq_state_dict(model: Model) -> dict[str, np.ndarray]:
    """A `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC` -> fairseq's state dict (float32 arrays)."""
    if not isinstance(model, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
        raise ValueError(
            f"fairseq's checkpoints hold a pretraining or CTC model, not a {type(model).__name__} "
            "(a bare encoder has no quantizer for fairseq's Wav2Vec2Model)"
        )
    ctc = isinstance(model, Wav2Vec2ForCTC)
    hf = params_to_hf(nnx.state(model, nnx.Param))
    return {hf_to_fairseq_key(k, model.config.feat_extract_norm, ctc): v for k, v in hf.items()}


def fairseq_cfg(config: Wav2Vec2Config, *, ctc: bool, normalize: bool, data: str) -> dict[str, Any]:
    """A hydra-style `cfg` of plain dicts that fairseq's `load_model_ensemble_and_task` builds from:
    `task` (audio_pretraining / audio_finetuning), `model` (wav2vec2 / wav2vec_ctc with the
    pretraining model in `w2v_args`), `criterion` (wav2vec / ctc)."""
    pretraining_task = {"_name": "audio_pretraining", "data": data, "normalize": normalize, "sample_rate": SAMPLE_RATE}
    pretraining = {
        "task": pretraining_task,
        "model": _model_fields(config),
        "criterion": {
            "_name": "wav2vec",
            "infonce": True,
            "loss_weights": [config.diversity_loss_weight, config.feature_penalty_weight],
            "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
        },
    }
    if not ctc:
        return {"common": {}, **pretraining}
    model = {
        "_name": "wav2vec_ctc",
        "w2v_path": "",
        "w2v_args": pretraining,
        "no_pretrained_weights": True,
        "apply_mask": config.mask_time_prob > 0 or config.mask_feature_prob > 0,
        "mask_prob": config.mask_time_prob,
        "mask_length": config.mask_time_length,
        "mask_channel_prob": config.mask_feature_prob,
        "mask_channel_length": config.mask_feature_length,
        "dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "dropout_input": config.feat_proj_dropout,
        "final_dropout": config.final_dropout,
        "layerdrop": config.layerdrop,
        "feature_grad_mult": config.feature_grad_mult,
        "normalize": normalize,
        "data": data,
    }
    return {
        "common": {},
        "task": {**pretraining_task, "_name": "audio_finetuning", "labels": "ltr"},
        "model": model,
        "criterion": {"_name": "ctc", "zero_infinity": config.ctc_zero_infinity},
    }


def save_fairseq_checkpoint(
    model: Model, path: str | os.PathLike, *, vocabulary: Vocabulary | None = None, normalize: bool = True
) -> None:
    """Writes `model` as a fairseq `.pt` (module docstring); needs torch (the `reference` extra).

    Args:
      model: a `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC`.
      path: the `.pt` file; a CTC model's `dict.ltr.txt` goes beside it.
      vocabulary: a CTC model's (required for one).
      normalize: fairseq's `task.normalize` (our pipeline normalises each utterance: True).
    """
    torch = import_reference("torch", "writing a fairseq checkpoint")
    path = pathlib.Path(path)
    ctc = isinstance(model, Wav2Vec2ForCTC)
    if ctc and vocabulary is None:
        raise ValueError("a CTC model's fairseq checkpoint needs its vocabulary (for dict.ltr.txt)")
    weights = fairseq_state_dict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ctc:
        assert vocabulary is not None  # checked above
        if len(vocabulary) != model.config.vocab_size:
            raise ValueError(f"the vocabulary has {len(vocabulary)} tokens, the head {model.config.vocab_size}")
        write_fairseq_dictionary(vocabulary, path.parent / DICT_FILE)
    state = {
        "args": None,
        "cfg": fairseq_cfg(model.config, ctc=ctc, normalize=normalize, data=str(path.parent.resolve())),
        "model": {k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()},
        "optimizer_history": [
            {
                "criterion_name": "CtcCriterion" if ctc else "Wav2vecCriterion",
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
