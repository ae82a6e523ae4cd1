"""transformers' checkpoint folders (`Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC`, `Wav2Vec2Model`), both directions.

Our parameters carry transformers' module names (`Wav2Vec2ForPreTraining` and `Wav2Vec2ForCTC`
hold the encoder as `wav2vec2`, `Wav2Vec2Model` is the encoder itself), so a transformers key is our parameter path
after a few renames (`scale`/`kernel` -> `weight`, the conv stack's `layers` -> `conv_layers`,
`norm` -> `layer_norm`) and each array after a layout change:

    Linear   kernel [in, out]                  <-> weight [out, in]
    Conv     kernel [K, C_in/groups, C_out]    <-> weight [C_out, C_in/groups, K]
    pos conv weight_g [K]                      <-> parametrizations.weight.original0 [1, 1, K]
             weight_v [K, C/groups, C]         <-> parametrizations.weight.original1 [C, C/groups, K]
    codevectors [G*V, D/G]                     <-> [1, G*V, D/G]

Older checkpoints name the positional conv's weight norm `weight_g`/`weight_v`; both are read.
Files are read as safetensors, or `pytorch_model.bin` (`torch.save` of the state dict) through
`torch_files.read_torch_checkpoint`, without torch: its restricted unpickler reads tensors and
nothing else that could run. Conversions are exact (transposes and reshapes only).

In memory: `params_from_hf(config, state_dict)` -> `nnx.State`, `params_to_hf(params)` ->
`{transformers key: np.ndarray}` (load it into a torch model with `load_state_dict` after
`torch.from_numpy`). Folders: `load_hf_checkpoint`, `save_hf_checkpoint`. Which model a state dict
holds follows from its keys (`weights.model_class`). A CTC model's folder also holds its vocabulary
and processor files (`save_processor_files`), so `Wav2Vec2Processor.from_pretrained` and the
automatic-speech-recognition pipeline load it; `load_vocabulary` reads it back.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from w2v_jax.checkpoints.torch_files import read_torch_checkpoint
from w2v_jax.checkpoints.weights import Model, ParamPath, check_stored_weights, model_class
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.vocabulary import VOCAB_FILE, Vocabulary
from w2v_jax.json_files import member, read_json

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

# Key spellings of the positional conv's weight norm: torch's parametrizations API (transformers'
# current layout, which we write) and the older `torch.nn.utils.weight_norm` names.
_WEIGHT_NORM_NAMES = {
    "weight_g": ("parametrizations.weight.original0", "weight_g"),
    "weight_v": ("parametrizations.weight.original1", "weight_v"),
}


def hf_keys(path: ParamPath) -> tuple[str, ...]:
    """transformers' key(s) of one of our parameters, preferred spelling first.

    Paths of `Wav2Vec2ForPreTraining` (`("wav2vec2", "encoder", ...)`, `("quantizer", ...)`) give
    its keys, paths of `Wav2Vec2Model` (`("encoder", ...)`) the bare encoder's.
    """
    parts = [str(p) for p in path]
    prefix = parts[:1] if parts[0] == "wav2vec2" else []
    parts = parts[len(prefix) :]
    if parts[0] == "feature_extractor":
        parts = ["feature_extractor", "conv_layers", *parts[2:]]
        parts = ["layer_norm" if p == "norm" else p for p in parts]
    if parts[:2] == ["encoder", "pos_conv_embed"]:
        stem = [*prefix, "encoder", "pos_conv_embed", "conv"]
        names = _WEIGHT_NORM_NAMES.get(parts[2], (parts[2],))
        return tuple(".".join([*stem, name]) for name in names)
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    return (".".join(prefix + parts),)


def _to_hf_layout(path: ParamPath, value: np.ndarray) -> np.ndarray:
    name = path[-1]
    if name == "weight_g":
        return value.reshape(1, 1, -1)
    if name == "codevectors":
        return value[None]
    if name in ("kernel", "weight_v"):
        return np.ascontiguousarray(np.transpose(value))  # [in, out] / [K, C_in, C_out] reversed
    return value


def _from_hf_layout(path: ParamPath, value: np.ndarray) -> np.ndarray:
    name = path[-1]
    if name == "weight_g":
        return value.reshape(-1)
    if name == "codevectors":
        return value[0]
    if name in ("kernel", "weight_v"):
        return np.ascontiguousarray(np.transpose(value))
    return value


def _has_masked_spec_embed(config: Wav2Vec2Config) -> bool:
    """transformers creates `masked_spec_embed` only for models that mask (mask_time_prob > 0)."""
    return config.mask_time_prob > 0.0


def params_to_hf(params: nnx.State, config: Wav2Vec2Config | None = None) -> dict[str, np.ndarray]:
    """Our `nnx.State` of parameters -> transformers' state dict (float32 NumPy arrays).

    Args:
      params: `nnx.state(model, nnx.Param)` (or the whole model state) of a `Wav2Vec2ForPreTraining`
        or a `Wav2Vec2Model`.
      config: when given and `mask_time_prob == 0`, `masked_spec_embed` is left out, as
        transformers builds no such parameter then.
    """
    out = {}
    for path, variable in nnx.to_flat_state(params):
        if not isinstance(variable, nnx.Param):
            continue
        if path[-1] == "masked_spec_embed" and config is not None and not _has_masked_spec_embed(config):
            continue
        value = np.asarray(jax.device_get(variable[...]), np.float32)
        out[hf_keys(path)[0]] = _to_hf_layout(path, value)
    return out


def params_from_hf(
    config: Wav2Vec2Config, state_dict: Mapping[str, np.ndarray], cls: type[Model] | None = None
) -> nnx.State:
    """transformers' state dict -> our `nnx.State` of parameters for `cls(config)`.

    Args:
      config: the model's config.
      state_dict: a `Wav2Vec2ForPreTraining`'s or a `Wav2Vec2Model`'s state dict.
      cls: the model to build; default `model_class(state_dict)`.

    Raises a ValueError listing missing keys, unexpected keys and shape mismatches.
    """
    cls = model_class(state_dict) if cls is None else cls
    abstract = nnx.eval_shape(lambda: cls(config))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    used, missing, mismatched, values = set(), [], [], []
    for path, variable in flat:
        key = next((k for k in hf_keys(path) if k in state_dict), None)
        if key is None:
            if path[-1] == "masked_spec_embed" and not _has_masked_spec_embed(config):
                # Never trained (the checkpoint never masks): the reference's U[0, 1) initialisation.
                values.append(jax.random.uniform(jax.random.key(0), variable.shape, jnp.float32))
                continue
            missing.append(hf_keys(path)[0])
            continue
        used.add(key)
        value = _from_hf_layout(path, np.asarray(state_dict[key], np.float32))
        if value.shape != tuple(variable.shape):
            mismatched.append(f"{key}: {np.shape(state_dict[key])} in the checkpoint")
        values.append(jnp.asarray(value))
    unexpected = sorted(set(state_dict) - used)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint does not match {cls.__name__}(config): "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {mismatched}"
        )
    return nnx.from_flat_state([(path, variable.replace(value)) for (path, variable), value in zip(flat, values)])


def _read_pytorch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    """transformers' `pytorch_model.bin`: a state dict of tensors (in their stored dtypes)."""
    state_dict = read_torch_checkpoint(path)
    if not_tensors := [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]:
        raise ValueError(f"{path}: not a state dict of tensors: {not_tensors[:5]} hold other values")
    return state_dict


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The weights of a transformers folder: model.safetensors (single or sharded) or pytorch_model.bin."""
    folder = pathlib.Path(path)
    if (folder / "model.safetensors").is_file():
        return safetensors.numpy.load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = member(read_json(index, expect=dict), "weight_map", dict, index)
        if not all(isinstance(shard, str) for shard in weight_map.values()):
            raise ValueError(f'{index}: expected a file name for each weight of "weight_map"')
        shards = sorted(set(weight_map.values()))
        return {k: v for shard in shards for k, v in safetensors.numpy.load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return _read_pytorch_bin(folder / "pytorch_model.bin")
    raise ValueError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_checkpoint(
    path: str | os.PathLike, *, dtype: jnp.dtype | None = None, allow_nonfinite: bool = False
) -> tuple[Wav2Vec2Config, Model]:
    """Reads a transformers `Wav2Vec2ForPreTraining` or `Wav2Vec2Model` folder (config.json + weights).

    Args:
      path: the folder.
      dtype: computation dtype of the returned model (parameters are float32).
      allow_nonfinite: accept NaN or infinite weights (refused by default, `check_stored_weights`).

    Returns:
      `(config, model)`, the model of the class the weights hold (`model_class`).
    """
    folder = pathlib.Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}")
    config = Wav2Vec2Config.from_json_file(folder / CONFIG_FILE)
    state_dict = read_hf_state_dict(folder)
    model = model_from_hf(
        config, state_dict, model_class(state_dict), folder, dtype=dtype, allow_nonfinite=allow_nonfinite
    )
    return config, model


def model_from_hf(
    config: Wav2Vec2Config,
    state_dict: Mapping[str, np.ndarray],
    cls: type[Model],
    source: str | os.PathLike,
    *,
    dtype: jnp.dtype | None = None,
    allow_nonfinite: bool = False,
) -> Model:
    """`cls(config)` holding an untrusted checkpoint's weights (transformers' keys), checked first
    (`check_stored_weights`; `source` names the checkpoint in messages); no random initialisation."""
    check_stored_weights(config, state_dict, source, allow_nonfinite=allow_nonfinite)
    params = params_from_hf(config, state_dict, cls)
    model = nnx.eval_shape(lambda: cls(config, dtype=dtype))
    nnx.update(model, params)
    return model


def write_config(config: Wav2Vec2Config, model: Model, folder: pathlib.Path) -> None:
    """`folder/config.json`: transformers' config of `model`'s class (fairseq fields included)."""
    with open(folder / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump({**config.to_hf_dict(), "architectures": [type(model).__name__]}, f, indent=2, sort_keys=True)
        f.write("\n")


def preprocessor_config(config: Wav2Vec2Config) -> dict[str, object]:
    """transformers' `Wav2Vec2FeatureExtractor` settings for our models: 16 kHz mono, each utterance
    normalised to zero mean and unit variance (as the training pipeline does, `data.normalize`),
    zero padding; an attention mask only for layer-norm models (group-norm ones run unpadded, as
    transformers' own BASE checkpoints say)."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_side": "right",
        "padding_value": 0.0,
        "do_normalize": True,
        "return_attention_mask": config.feat_extract_norm == "layer",
    }


def save_feature_extractor(config: Wav2Vec2Config, path: str | os.PathLike, *, do_normalize: bool) -> None:
    """Writes `preprocessor_config.json` alone (`preprocessor_config`, `do_normalize` as given): a
    pretrained model's record of the inputs it was trained on (fairseq's `task.normalize`), which
    fine-tuning from it and `jax-to-fairseq` keep (`loading.input_normalization`)."""
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {**preprocessor_config(config), "do_normalize": do_normalize}
    (folder / PREPROCESSOR_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_processor_files(
    vocabulary: Vocabulary, config: Wav2Vec2Config, path: str | os.PathLike, *, do_normalize: bool = True
) -> None:
    """Writes the files `transformers.Wav2Vec2Processor.from_pretrained` reads: `vocab.json`,
    `tokenizer_config.json` and `special_tokens_map.json` (a `Wav2Vec2CTCTokenizer` whose decode is
    `Vocabulary.decode`), and `preprocessor_config.json` (a `Wav2Vec2FeatureExtractor` at 16 kHz).

    Args:
      vocabulary: the CTC head's tokens; its size must be `config.vocab_size`.
      config: the model's config; layer-norm models get attention masks from the feature
        extractor, group-norm models zero padding only (transformers' convention).
      path: the folder (created if missing).
      do_normalize: the feature extractor normalises each utterance to zero mean, unit variance,
        as our input pipeline does with `data.normalize`.
    """
    if len(vocabulary) != config.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocabulary)} tokens but config.vocab_size is {config.vocab_size}")
    if vocabulary.pad_id != config.pad_token_id:
        raise ValueError(
            f"the vocabulary's {vocabulary.pad_token} is id {vocabulary.pad_id} but "
            f"config.pad_token_id (the CTC blank) is {config.pad_token_id}"
        )
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary.save(folder / VOCAB_FILE)
    special = {
        "pad_token": vocabulary.pad_token,
        "unk_token": vocabulary.unk_token,
        # Only tokens the vocabulary holds: the tokenizer would append missing ones as new ids.
        **{name: token for name, token in (("bos_token", "<s>"), ("eos_token", "</s>")) if token in vocabulary},
    }
    tokenizer = {
        "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "processor_class": "Wav2Vec2Processor",
        "word_delimiter_token": vocabulary.word_delimiter_token,
        "replace_word_delimiter_char": " ",
        "do_lower_case": False,
        **special,
    }
    feature_extractor = {
        **preprocessor_config(config),
        "do_normalize": do_normalize,
        "processor_class": "Wav2Vec2Processor",
    }
    for name, content in (
        ("tokenizer_config.json", tokenizer),
        ("special_tokens_map.json", special),
        (PREPROCESSOR_FILE, feature_extractor),
    ):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_vocabulary(path: str | os.PathLike) -> Vocabulary | None:
    """The `vocab.json` of a checkpoint folder (transformers' or ours), with the tokenizer's special
    tokens when `tokenizer_config.json` names them; None when the folder has no vocabulary."""
    folder = pathlib.Path(path)
    if not (folder / VOCAB_FILE).is_file():
        return None
    names = {}
    if (folder / "tokenizer_config.json").is_file():
        settings = read_json(folder / "tokenizer_config.json", expect=dict)
        names = {
            k: settings[k]
            for k in ("pad_token", "unk_token", "word_delimiter_token")
            if isinstance(settings.get(k), str)
        }
    return Vocabulary.load(folder / VOCAB_FILE, **names)


def save_hf_checkpoint(
    config: Wav2Vec2Config, model: Model, path: str | os.PathLike, *, vocabulary: Vocabulary | None = None
) -> None:
    """Writes a folder that transformers' class of the same name (`Wav2Vec2ForPreTraining`,
    `Wav2Vec2ForCTC` or `Wav2Vec2Model`) `from_pretrained` loads with no missing or unexpected keys:
    config.json (with our fairseq fields, which transformers keeps as extra attributes) and
    model.safetensors; with a `vocabulary` (CTC models) also the processor files
    (`save_processor_files`)."""
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(config, model, folder)
    if vocabulary is not None:
        save_processor_files(vocabulary, config, folder)
    else:
        with open(folder / PREPROCESSOR_FILE, "w", encoding="utf-8") as f:
            json.dump(preprocessor_config(config), f, indent=2, sort_keys=True)
            f.write("\n")
    state_dict = params_to_hf(nnx.state(model, nnx.Param), config)
    safetensors.numpy.save_file(state_dict, folder / "model.safetensors", metadata={"format": "pt"})
