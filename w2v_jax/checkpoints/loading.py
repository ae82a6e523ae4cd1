"""A model from any checkpoint format in one call: `load_model(path, step=None)`.

The formats, told apart by what the path holds:
- a training workdir (`config.json` + orbax `checkpoints/`, from `w2v-pretrain` or
  `w2v-finetune`): the newest intact checkpoint or `step`; a fine-tuning workdir's best
  model by the validation metric (`best/`) by default;
- our folder format (`config.json` + `params.safetensors`, `folder.save_checkpoint`);
- a transformers folder (`config.json` + `model.safetensors` / `pytorch_model.bin`, `hf`);
- a fairseq `.pt` file (`fairseq`: pretraining or CTC fine-tuned, read without fairseq or torch);
- a fairseq2 `.pt` file (`fairseq2`: pretraining or CTC, Omnilingual's included, its architecture
  named from its tensors' shapes), told from a fairseq one by its top level (`fairseq2.is_fairseq2_state`).

A training workdir's checkpoint is read in part: the model's variables (`params`, `model_state`) of
the run state, never the optimizer's moments (`checkpointer.Checkpointer.restore(partial=True)`): no
optimizer or train state is built, and no moment is read into memory (docs/checkpoints.md measures
the difference). Nothing here imports the training loop: inference (transcription, evaluation,
export, representations) runs without it. `load_encoder` and
`load_ctc_checkpoint` are the pieces fine-tuning and transcription take from a checkpoint.
"""

from __future__ import annotations

import os
import pathlib

import jax
import ml_collections
from flax import nnx

from w2v_jax.checkpoints import folder as folder_format
from w2v_jax.checkpoints import hf
from w2v_jax.checkpoints.checkpointer import Checkpointer
from w2v_jax.checkpoints.fairseq import FairseqImport, import_fairseq_state
from w2v_jax.checkpoints.fairseq2 import Fairseq2Import, import_fairseq2_state, is_fairseq2_state
from w2v_jax.checkpoints.run_layout import BEST_MODEL_DIR, CHECKPOINTS_DIR, CONFIG_FILE, MODEL_CONFIG_FILE
from w2v_jax.checkpoints.torch_files import read_torch_checkpoint
from w2v_jax.checkpoints.weights import Model
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import VOCAB_FILE, Vocabulary
from w2v_jax.json_files import read_json
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, Wav2Vec2Model


def load_model(path: str | os.PathLike, step: int | None = None) -> Model:
    """A model from any of our checkpoint formats (see the module docstring).

    Args:
      path: a training workdir, our folder format, a transformers folder, or a fairseq or
        fairseq2 `.pt` file.
      step: the workdir checkpoint to load; default the newest, or for a fine-tuning workdir its
        best model by the validation metric (`WORKDIR/best/`, the newest checkpoint before any
        validation).
    """
    folder = pathlib.Path(path)
    if folder.suffix == ".pt" and folder.is_file():
        if step is not None:
            raise ValueError(f"step={step} only applies to a training workdir, not the .pt file {folder}")
        return load_torch_file(folder).model
    if (folder / CHECKPOINTS_DIR).is_dir():
        if step is None and (folder / BEST_MODEL_DIR / folder_format.PARAMS_FILE).is_file():
            return folder_format.load_checkpoint(folder / BEST_MODEL_DIR)[1]
        return _load_workdir(folder, step)
    if step is not None:
        raise ValueError(f"step={step} only applies to a training workdir (with {CHECKPOINTS_DIR}/), not {folder}")
    if (folder / folder_format.PARAMS_FILE).is_file():
        return folder_format.load_checkpoint(folder)[1]
    if (folder / hf.CONFIG_FILE).is_file():
        return hf.load_hf_checkpoint(folder)[1]
    raise ValueError(
        f"{folder} is not a checkpoint: expected a training workdir ({CHECKPOINTS_DIR}/), {folder_format.PARAMS_FILE}, "
        "a transformers folder (config.json + model.safetensors), or a fairseq or fairseq2 .pt file"
    )


def load_torch_file(path: str | os.PathLike) -> FairseqImport | Fairseq2Import:
    """A fairseq or a fairseq2 `.pt`, read once and imported as the format its top level names
    (`fairseq2.is_fairseq2_state`); a fairseq2 file's architecture is named from its shapes."""
    path = pathlib.Path(path)
    state = read_torch_checkpoint(path)
    if is_fairseq2_state(state):
        return import_fairseq2_state(state, path)
    return import_fairseq_state(state, path)


def _load_workdir(folder: pathlib.Path, step: int | None) -> Wav2Vec2ForPreTraining | Wav2Vec2ForCTC:
    """Restores the model's variables of a training run's checkpoint onto this process's first device
    (whatever devices and processes wrote it); the optimizer state is never read."""
    config = ml_collections.ConfigDict(read_json(folder / CONFIG_FILE, expect=dict))
    # A fine-tuning run's config names its labels; its model (the pretrained architecture with the
    # vocabulary's head) and a continued pretraining run's (the init checkpoint's architecture) are
    # in model_config.json: their run config's `model` section is not the model.
    model_class: type[Wav2Vec2ForCTC] | type[Wav2Vec2ForPreTraining] = (
        Wav2Vec2ForCTC if "labels" in config.get("data", {}) else Wav2Vec2ForPreTraining
    )
    if (folder / MODEL_CONFIG_FILE).is_file():
        model_config = Wav2Vec2Config.from_json_file(folder / MODEL_CONFIG_FILE)
    else:
        model_config = Wav2Vec2Config.from_run_config(config)
    # Shapes only: the model is traced, not initialised.
    graphdef, params, model_state = jax.eval_shape(
        lambda: nnx.split(model_class(model_config, rngs=nnx.Rngs(0)), nnx.Param, ...)
    )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # The fields of the run state that hold the model (`training.train_step.TrainState`).
    fields = {"params": params, "model_state": model_state}
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), fields)
    # Read-only: the run may be live, its in-flight save must not be cleaned up or its steps moved.
    checkpointer = Checkpointer(folder / CHECKPOINTS_DIR, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ValueError(f"{folder / CHECKPOINTS_DIR} holds no complete checkpoint")
        if step is None:  # the newest intact one (a corrupt newer one is reported and skipped)
            newest = checkpointer.restore_newest_intact(target, move_aside=False, partial=True)
            assert newest is not None  # the directory holds checkpoints (`steps`)
            _, restored, _ = newest
        elif step not in steps:
            raise ValueError(f"no checkpoint {step} in {folder / CHECKPOINTS_DIR}; available: {sorted(steps)}")
        else:
            restored, _ = checkpointer.restore(step, target, partial=True)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, restored["params"], restored["model_state"])


def load_encoder(path: str | os.PathLike) -> tuple[Wav2Vec2Config, nnx.State, bool | None]:
    """The config and encoder (`Wav2Vec2Model`) parameters of any checkpoint (`load_model`: a
    pretraining or fine-tuning workdir, our folder format, a transformers folder, a fairseq or
    fairseq2 `.pt`), and whether the checkpoint says its inputs were normalised per utterance (a
    fairseq `.pt` file's `task.normalize`, else `stored_input_normalization`; None where it says
    nothing, as a fairseq2 file does)."""
    path = pathlib.Path(path)
    if path.suffix == ".pt" and path.is_file():
        imported = load_torch_file(path)
        model = imported.model
        normalize = imported.normalize if isinstance(imported, FairseqImport) else None
    else:
        model, normalize = load_model(path), stored_input_normalization(path)
    encoder = model if isinstance(model, Wav2Vec2Model) else model.wav2vec2
    return model.config, nnx.state(encoder, nnx.Param), normalize


def load_ctc_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[Wav2Vec2ForCTC, Vocabulary, bool]:
    """A fine-tuned model, its vocabulary and whether its inputs are normalised (zero mean, unit variance).

    Args:
      path: a fine-tuning workdir (its best model by default, `step` for a checkpoint), our folder
        format, a transformers `Wav2Vec2ForCTC` folder with a vocab.json, or a fairseq fine-tuned
        `.pt` with its `dict.ltr.txt` beside it (inputs normalised as its `task.normalize` says).
      step: a workdir checkpoint.
    """
    folder = pathlib.Path(path)
    if folder.suffix == ".pt" and folder.is_file() and step is None:
        return _fairseq_ctc_checkpoint(folder)
    model = load_model(folder, step)
    if not isinstance(model, Wav2Vec2ForCTC):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not a fine-tuned (CTC) model")
    vocabulary = hf.load_vocabulary(folder)
    if vocabulary is None:
        raise ValueError(f"{folder} has no {VOCAB_FILE}: the CTC head's tokens are unknown")
    if len(vocabulary) != model.config.vocab_size:
        raise ValueError(
            f"{folder}: {VOCAB_FILE} has {len(vocabulary)} tokens, the model's head {model.config.vocab_size}"
        )
    return model, vocabulary, input_normalization(folder)


def stored_input_normalization(path: str | os.PathLike) -> bool | None:
    """Whether a checkpoint folder's inputs are normalised per utterance, as its
    `preprocessor_config.json` says (`do_normalize`, True when it names none); None without the file."""
    preprocessor = pathlib.Path(path) / hf.PREPROCESSOR_FILE
    return bool(read_json(preprocessor, expect=dict).get("do_normalize", True)) if preprocessor.is_file() else None


def input_normalization(path: str | os.PathLike) -> bool:
    """`stored_input_normalization`, True for a folder that says nothing (our pipeline normalises)."""
    return stored_input_normalization(path) is not False


def _fairseq_ctc_checkpoint(path: pathlib.Path) -> tuple[Wav2Vec2ForCTC, Vocabulary, bool]:
    state = read_torch_checkpoint(path)
    if is_fairseq2_state(state):
        raise ValueError(
            f"{path} is a fairseq2 file, which holds no vocabulary: convert it with "
            "w2v-convert-checkpoint fairseq2-to-jax --tokenizer=<its SentencePiece .model>"
        )
    imported = import_fairseq_state(state, path)
    if not isinstance(imported.model, Wav2Vec2ForCTC):
        raise ValueError(f"{path} holds a {type(imported.model).__name__}, not a fine-tuned (CTC) model")
    if imported.vocabulary is None:
        raise ValueError(f"{path}: no dict.ltr.txt beside it: the CTC head's tokens are unknown")
    return imported.model, imported.vocabulary, imported.normalize
