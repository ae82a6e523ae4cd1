"""The wav2vec 2.0 models' configuration (pretraining and CTC fine-tuning), in transformers' vocabulary.

`Wav2Vec2Config` uses the field names of transformers' `Wav2Vec2Config` (so a checkpoint's
`config.json` reads and writes directly) plus two fairseq options transformers lacks:
`feature_penalty_weight` (fairseq's `loss_weights[1]`, the weight of mean(z^2)) and
`feature_grad_mult` (the scale of the gradient that reaches the conv feature encoder).

Presets (fairseq's pretraining recipes, see `shared/REFERENCE.md`):

    Wav2Vec2Config.preset("tiny")    # tests: 32-channel convs, 2 x 32-dim layers, CPU seconds
    Wav2Vec2Config.preset("small")   # 4 x 256-dim layers on the BASE conv stack
    Wav2Vec2Config.preset("base")    # BASE, 95.0M parameters
    Wav2Vec2Config.preset("large")   # LARGE (LV-60), 317.4M parameters
    Wav2Vec2Config.preset("base", num_negatives=50)   # any field can be overridden

Every value is checked at construction: a bad one raises a ValueError naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

from w2v_jax.json_files import read_json

# The Transformer activations the context network knows (transformers' ACT2FN names).
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish")
# How the context network computes attention (`context_network.SelfAttention` says what each does).
AttentionImplementation = Literal["auto", "explicit", "xla", "cudnn"]
ATTENTION_IMPLEMENTATIONS: tuple[AttentionImplementation, ...] = get_args(AttentionImplementation)
# The feature encoder's normalisation and the CTC loss's reduction over the batch.
FeatExtractNorm = Literal["group", "layer"]
CTCLossReduction = Literal["sum", "mean"]
# The config's dropout probabilities (LayerDrop, `layerdrop`, is a probability of its own kind).
DROPOUT_FIELDS = (
    "hidden_dropout",
    "activation_dropout",
    "attention_dropout",
    "feat_proj_dropout",
    "feat_quantizer_dropout",
    "final_dropout",
)
# The fields that make the model what it is: the shapes of its weights (conv stack, Transformer,
# positional convolution, codebooks, contrastive projections, the CTC head's vocabulary and blank)
# and what the weights compute (norms, activations, epsilons). A checkpoint fixes them; a run that
# starts from one takes them from it (`pretraining.task`, `asr.task`). Every other field is how the
# model is trained (`TRAINING_FIELDS`: dropouts, LayerDrop, masking, negatives, loss weights and
# temperature, the encoder's gradient scale, CTC options) or computed (the attention kernel), which
# a run's config sets on top of a checkpoint's architecture.
ARCHITECTURE_FIELDS = (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_extract_activation",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "num_codevector_groups",
    "num_codevectors_per_group",
    "codevector_dim",
    "proj_codevector_dim",
    "vocab_size",
    "pad_token_id",
)


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """Hyper-parameters of `Wav2Vec2ForPreTraining`; defaults are fairseq's BASE pretraining recipe.

    Attributes (transformers' names and meanings):
      conv_dim, conv_kernel, conv_stride: channels, kernel sizes and strides of the conv layers.
      conv_bias: whether the conv layers have biases (LARGE: True).
      feat_extract_norm: "group" (one GroupNorm over time after conv 0, BASE) or "layer"
        (LayerNorm over channels after every conv, LARGE).
      feat_extract_activation: activation of the conv layers and of the positional conv.
      hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act:
        the Transformer.
      hidden_dropout: dropout after attention / feed-forward blocks and on the encoder input.
      activation_dropout: dropout after the feed-forward activation.
      attention_dropout: dropout on the attention probabilities.
      feat_proj_dropout: dropout after the feature projection (fairseq's dropout_input).
      feat_quantizer_dropout: dropout on the features fed to the quantizer (dropout_features).
      final_dropout: dropout on the encoder output before the CTC head (`Wav2Vec2ForCTC`).
      layerdrop: probability of skipping each Transformer layer in training.
      layer_norm_eps: epsilon of the feature projection's and the Transformer's LayerNorms.
      do_stable_layer_norm: pre-LN Transformer with a final LayerNorm (LARGE) instead of post-LN.
      num_conv_pos_embeddings, num_conv_pos_embedding_groups: kernel size and groups of the
        weight-normed positional convolution.
      mask_time_prob, mask_time_length, mask_time_min_masks: span masking (pretraining: 0.65, 10, 2).
      mask_feature_prob, mask_feature_length, mask_feature_min_masks: channel (feature-axis)
        span masking in training, SpecAugment-style (fine-tuning; 0 = none). Masked channels of
        the projected features are zeroed on every frame, as transformers' `_mask_hidden_states` does.
      vocab_size: outputs of the CTC head (`lm_head`).
      pad_token_id: the CTC blank's id (transformers' convention).
      ctc_loss_reduction: "sum" over the batch or "mean" (each utterance's loss divided by its
        target length, then averaged).
      ctc_zero_infinity: impossible alignments get loss 0 instead of infinity.
      num_codevector_groups, num_codevectors_per_group: G and V of the quantizer.
      codevector_dim: channels of the concatenated codewords; proj_codevector_dim: final dim of
        the contrastive space (project_hid and project_q).
      contrastive_logits_temperature: kappa; num_negatives: K distractors per masked frame.
      diversity_loss_weight: alpha of the diversity loss.
      feature_penalty_weight: weight of fairseq's feature penalty mean(z^2) (0 in transformers).
      feature_grad_mult: gradient scale into the feature encoder (1 in transformers, 0.1 BASE).
      attention_implementation: how attention is computed, one of `ATTENTION_IMPLEMENTATIONS`
        ("auto": fused without dropout, spelled out with it); a choice of kernels, not of the
        model (transformers' `attn_implementation`); "cudnn" needs a CUDA GPU.
    """

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: FeatExtractNorm = "group"
    feat_extract_activation: str = "gelu"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.0
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.1
    feat_quantizer_dropout: float = 0.1
    final_dropout: float = 0.0
    layerdrop: float = 0.05
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    diversity_loss_weight: float = 0.1
    feature_penalty_weight: float = 10.0
    feature_grad_mult: float = 0.1
    vocab_size: int = 32
    pad_token_id: int = 0
    ctc_loss_reduction: CTCLossReduction = "sum"
    ctc_zero_infinity: bool = False
    attention_implementation: AttentionImplementation = "auto"

    # Overrides of the defaults above (BASE) per preset.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            conv_dim=(32,) * 7,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            mask_time_length=4,
            num_codevectors_per_group=8,
            codevector_dim=16,
            proj_codevector_dim=16,
            num_negatives=4,
        ),
        # The CPU research model (pretrain.py:mini; docs/research.md says how it was sized).
        "mini": dict(
            conv_dim=(128,) * 7,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            mask_time_length=4,
            num_codevectors_per_group=32,
            codevector_dim=64,
            proj_codevector_dim=64,
            num_negatives=10,
        ),
        "small": dict(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
        ),
        "base": {},
        # fairseq's wav2vec2_large_librivox.yaml: no dropouts but LayerDrop 0, layer-norm convs
        # with biases, pre-LN, 768-dim codewords, no feature penalty, full encoder gradient.
        "large": dict(
            conv_bias=True,
            feat_extract_norm="layer",
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            feat_proj_dropout=0.0,
            feat_quantizer_dropout=0.0,
            layerdrop=0.0,
            do_stable_layer_norm=True,
            codevector_dim=768,
            proj_codevector_dim=768,
            feature_penalty_weight=0.0,
            feature_grad_mult=1.0,
        ),
    }

    def __post_init__(self) -> None:
        # JSON gives lists; the config is hashable (a static jit argument) only with tuples.
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__len__"):
                raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, requirement: str) -> None:
            raise ValueError(f"Wav2Vec2Config.{name} {requirement}, got {getattr(self, name)!r}")

        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            values = getattr(self, name)
            if not values or any(not _is_int(v) or v < 1 for v in values):
                fail(name, "must be a non-empty sequence of positive ints")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(
                "Wav2Vec2Config.conv_dim, conv_kernel and conv_stride must have the same length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}"
            )
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
            "mask_time_length",
            "mask_feature_length",
            "vocab_size",
            "num_codevector_groups",
            "codevector_dim",
            "proj_codevector_dim",
            "num_negatives",
        ):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive int")
        if not _is_int(self.num_codevectors_per_group) or self.num_codevectors_per_group < 2:
            fail("num_codevectors_per_group", "must be an int >= 2")
        for name in ("mask_time_min_masks", "mask_feature_min_masks"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be an int >= 0")
        if not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            fail("pad_token_id", f"must be an id in [0, vocab_size={self.vocab_size}) (the CTC blank)")
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            fail("attention_implementation", f"must be one of {ATTENTION_IMPLEMENTATIONS}")
        if self.ctc_loss_reduction not in ("sum", "mean"):
            fail("ctc_loss_reduction", "must be 'sum' or 'mean'")
        for name in ("conv_bias", "do_stable_layer_norm", "ctc_zero_infinity"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        if self.feat_extract_norm not in ("group", "layer"):
            fail("feat_extract_norm", "must be 'group' or 'layer'")
        if self.feat_extract_activation != "gelu":
            fail("feat_extract_activation", "must be 'gelu' (the feature encoder's activation)")
        if self.hidden_act not in ACTIVATIONS:
            fail("hidden_act", f"must be one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"must divide hidden_size={self.hidden_size}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            fail("num_conv_pos_embedding_groups", f"must divide hidden_size={self.hidden_size}")
        if self.codevector_dim % self.num_codevector_groups:
            fail("codevector_dim", f"must be divisible by num_codevector_groups={self.num_codevector_groups}")
        for name in DROPOUT_FIELDS:
            if not _is_real(getattr(self, name)) or not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "must be a probability in [0, 1)")
        for name in ("layerdrop", "mask_time_prob", "mask_feature_prob"):
            if not _is_real(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "must be a probability in [0, 1]")
        for name in ("layer_norm_eps", "contrastive_logits_temperature"):
            if not _is_real(getattr(self, name)) or not getattr(self, name) > 0.0:
                fail(name, "must be a positive number")
        for name in ("diversity_loss_weight", "feature_penalty_weight", "feature_grad_mult"):
            if not _is_real(getattr(self, name)) or not getattr(self, name) >= 0.0:
                fail(name, "must be a non-negative number")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Wav2Vec2Config:
        """One of "tiny", "mini", "small", "base", "large", with any field overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Wav2Vec2Config fields: {sorted(unknown)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def from_run_config(cls, config: Any) -> Wav2Vec2Config:
        """The model of a run config (`w2v_jax/configs/pretrain.py`'s ConfigDict): its `model` section."""
        if "model" not in config:
            raise ValueError(f"run config has no 'model' section; its sections: {sorted(config)}")
        values = config.model.to_dict()
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Wav2Vec2Config fields in the run config's model section: {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> Wav2Vec2Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per frame (320 with the standard conv stack)."""
        return math.prod(self.conv_stride)

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any]) -> Wav2Vec2Config:
        """Builds a config from a transformers `config.json` dict.

        Fields these models don't use (classification heads, adapters' sizes) are ignored. A checkpoint without the
        fairseq-only fields gets the values that make it compute what transformers computes: no feature penalty, full
        encoder gradient. Raises a ValueError for options that change the architecture and are not implemented.
        """
        model_type = config.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ValueError(f"config.json's model_type is {model_type!r}, expected 'wav2vec2'")
        if config.get("add_adapter") or config.get("adapter_attn_dim") is not None:
            raise ValueError("wav2vec2 adapters (add_adapter / adapter_attn_dim) are not supported")
        if config.get("apply_spec_augment") is False:
            raise ValueError("apply_spec_augment=False is not supported: pretraining masks time steps")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in config.items() if k in names}
        values.setdefault("feature_penalty_weight", 0.0)
        values.setdefault("feature_grad_mult", 1.0)
        # transformers' own defaults for the fields a (minimal) config.json may leave out.
        for name, default in _HF_DEFAULTS.items():
            values.setdefault(name, default)
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `config.json` dict (`Wav2Vec2ForPreTraining`; writers of other models
        replace `architectures`), fairseq fields included."""
        out: dict[str, Any] = {"architectures": ["Wav2Vec2ForPreTraining"], "model_type": "wav2vec2"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["num_feat_extract_layers"] = self.num_feat_extract_layers
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Wav2Vec2Config:
        """Reads a transformers `config.json`; a JSONFileError naming it when it is no JSON object."""
        return cls.from_hf_dict(read_json(path, expect=dict))

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Writes a transformers `config.json`."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
            f.write("\n")


# How the model is trained or computed: every field but the architecture's (`ARCHITECTURE_FIELDS`).
TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(Wav2Vec2Config) if f.name not in ARCHITECTURE_FIELDS)


# transformers' Wav2Vec2Config defaults where they differ from ours (BASE pretraining), so a
# config.json that omits a field means what it means to transformers.
_HF_DEFAULTS: dict[str, Any] = {
    "activation_dropout": 0.1,
    "feat_proj_dropout": 0.0,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.1,
    "layerdrop": 0.1,
    "mask_time_prob": 0.05,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
