"""Conversions between checkpoint formats: `convert(direction, source, destination)`.

- `hf-to-jax`: a transformers folder (`Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` or `Wav2Vec2Model`:
  config.json + model.safetensors or pytorch_model.bin) -> our folder (config.json + params.safetensors);
- `jax-to-hf`: a training workdir (its newest checkpoint or `step`; a fine-tuning workdir's best
  model by default) or our folder -> a transformers folder that `from_pretrained`,
  `AutoFeatureExtractor` and the pipelines load.
- `fairseq-to-jax`: a fairseq `.pt` (pretraining or CTC fine-tuned; a CTC model's `dict.ltr.txt`
  from `dictionary` or beside the file) -> our folder;
- `jax-to-fairseq`: a training workdir, our folder or a transformers folder -> a fairseq `.pt`
  (`fairseq.save_fairseq_checkpoint`; needs torch, the `reference` extra);
- `fairseq2-to-jax`: a fairseq2 `.pt` (pretraining or CTC, Omnilingual's included; its architecture
  named from its shapes, or by `arch`: a preset or a config.json) -> our folder;
- `jax-to-fairseq2`: a training workdir, our folder or a transformers folder -> a fairseq2 `.pt`
  (`fairseq2.save_fairseq2_checkpoint`; needs torch), its card's preset printed.

A CTC model's vocabulary (vocab.json and the tokenizer's special tokens) goes with it both ways.
"""

from __future__ import annotations

import os
import pathlib

from w2v_jax.checkpoints import fairseq, fairseq2, folder, hf
from w2v_jax.checkpoints.checkpointer import has_checkpoints
from w2v_jax.checkpoints.loading import input_normalization, load_model
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForCTC

FAIRSEQ_DIRECTIONS = ("fairseq-to-jax", "jax-to-fairseq")
FAIRSEQ2_DIRECTIONS = ("fairseq2-to-jax", "jax-to-fairseq2")
DIRECTIONS = ("hf-to-jax", "jax-to-hf", *FAIRSEQ_DIRECTIONS, *FAIRSEQ2_DIRECTIONS)


def convert(
    direction: str,
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    step: int | None = None,
    allow_nonfinite: bool = False,
    dictionary: str | os.PathLike | None = None,
    arch: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    num_updates: int | None = None,
) -> str | None:
    """Writes `source` in the other format at `destination` (see the module docstring).

    Args:
      direction: one of `DIRECTIONS`.
      source, destination: folders (`source` may be a training workdir for `jax-to-hf`).
      step: `jax-to-hf` from a training workdir: its checkpoint step.
      allow_nonfinite: convert weights holding NaN or infinity (refused by default).
      dictionary: `fairseq-to-jax`: a CTC model's `dict.ltr.txt` (default: beside the `.pt`).
      arch: `fairseq2-to-jax`: a fairseq2 preset's name or a config.json of our config (default:
        the config the file stores, else the preset its shapes name).
      tokenizer: `fairseq2-to-jax`: a CTC model's SentencePiece `.model` (its tokenizer card's file).
      num_updates: `jax-to-fairseq2`: the pretraining model's `quantizer.num_updates` (default 0; a
        run's update count continues fairseq2's Gumbel temperature schedule where it stopped).

    Returns:
      For `fairseq-to-jax` and `fairseq2-to-jax`, what was read (and skipped); for
      `jax-to-fairseq2`, the fairseq2 preset of the model; else None.

    Raises:
      ValueError: an unknown direction, or `step` for a source that is not a training workdir.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for name, value, applies in (
        ("--arch", arch, "fairseq2-to-jax"),
        ("--tokenizer", tokenizer, "fairseq2-to-jax"),
        ("--num_updates", num_updates, "jax-to-fairseq2"),
    ):
        if value is not None and direction != applies:
            raise ValueError(f"{name} applies to {applies}, not {direction}")
    if direction == "fairseq2-to-jax":
        return fairseq2_to_jax(source, destination, arch=arch, tokenizer=tokenizer, allow_nonfinite=allow_nonfinite)
    if direction == "jax-to-fairseq2":
        return jax_to_fairseq2(source, destination, step=step, num_updates=num_updates or 0)
    if direction == "fairseq-to-jax":
        return fairseq_to_jax(source, destination, dictionary=dictionary, allow_nonfinite=allow_nonfinite)
    if direction == "jax-to-fairseq":
        jax_to_fairseq(source, destination, step=step)
        return None
    if dictionary is not None:
        raise ValueError(f"--dict applies to fairseq-to-jax, not {direction}")
    vocabulary = hf.load_vocabulary(source)
    if direction == "hf-to-jax":
        config, model = hf.load_hf_checkpoint(source, allow_nonfinite=allow_nonfinite)
        folder.save_checkpoint(config, model, destination, vocabulary=vocabulary)
    elif has_checkpoints(pathlib.Path(source) / CHECKPOINTS_DIR):
        model = load_model(source, step)  # training checkpoints are finite by construction
        hf.save_hf_checkpoint(model.config, model, destination, vocabulary=vocabulary)
    else:
        if step is not None:
            raise ValueError(f"--step applies to a training workdir (with {CHECKPOINTS_DIR}/), not {source}")
        config, model = folder.load_checkpoint(source, allow_nonfinite=allow_nonfinite)
        hf.save_hf_checkpoint(config, model, destination, vocabulary=vocabulary)
    return None


def fairseq_to_jax(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    dictionary: str | os.PathLike | None = None,
    allow_nonfinite: bool = False,
) -> str:
    """A fairseq `.pt` -> our folder; a CTC model's processor files keep fairseq's input
    normalisation (`task.normalize`). Returns what was read and skipped."""
    imported = fairseq.load_fairseq_checkpoint(source, dictionary, allow_nonfinite=allow_nonfinite)
    if isinstance(imported.model, Wav2Vec2ForCTC) and imported.vocabulary is None:
        raise ValueError(f"{source} is a CTC model: give its dict.ltr.txt with --dict (none beside the file)")
    folder.save_checkpoint(
        imported.config, imported.model, destination, vocabulary=imported.vocabulary, do_normalize=imported.normalize
    )
    return imported.summary()


def jax_to_fairseq(source: str | os.PathLike, destination: str | os.PathLike, *, step: int | None = None) -> None:
    """A training workdir (its best or newest model, or `step`), our folder or a transformers folder
    -> a fairseq `.pt` (with `dict.ltr.txt` beside it for a CTC model)."""
    model = load_model(source, step)
    vocabulary = hf.load_vocabulary(source)
    fairseq.save_fairseq_checkpoint(model, destination, vocabulary=vocabulary, normalize=input_normalization(source))


def fairseq2_to_jax(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    arch: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    allow_nonfinite: bool = False,
) -> str:
    """A fairseq2 `.pt` -> our folder; a CTC model's vocabulary from its SentencePiece `tokenizer`
    (required for one). `arch`: a preset's name or a config.json (`convert`). Returns what was read
    (`Fairseq2Import.summary`)."""
    given: str | Wav2Vec2Config | None = arch
    if arch is not None and arch not in fairseq2.PRESETS and pathlib.Path(arch).is_file():
        given = Wav2Vec2Config.from_json_file(arch)
    imported = fairseq2.load_fairseq2_checkpoint(source, arch=given, allow_nonfinite=allow_nonfinite)
    vocabulary = None
    if isinstance(imported.model, Wav2Vec2ForCTC):
        if tokenizer is None:
            raise ValueError(
                f"{source} is a CTC model: give its tokenizer's SentencePiece .model with --tokenizer "
                "(fairseq2 files hold no vocabulary)"
            )
        vocabulary = fairseq2.read_sentencepiece_vocabulary(tokenizer)
        if len(vocabulary) != imported.config.vocab_size:
            raise ValueError(
                f"{tokenizer} has {len(vocabulary)} pieces, the CTC head of {source} "
                f"{imported.config.vocab_size} outputs"
            )
    elif tokenizer is not None:
        raise ValueError(f"--tokenizer applies to a CTC model; {source} holds a pretraining model")
    # fairseq2's and Omnilingual's ASR recipes normalise each utterance (`normalize_audio`), as we do.
    folder.save_checkpoint(imported.config, imported.model, destination, vocabulary=vocabulary)
    return imported.summary()


def jax_to_fairseq2(
    source: str | os.PathLike, destination: str | os.PathLike, *, step: int | None = None, num_updates: int = 0
) -> str:
    """A training workdir (its best or newest model, or `step`), our folder or a transformers folder
    -> a fairseq2 `.pt` with `quantizer.num_updates` (a pretraining model). Returns the line naming
    its fairseq2 preset (its card's `model_arch`)."""
    model = load_model(source, step)
    preset = fairseq2.save_fairseq2_checkpoint(model, destination, num_updates=num_updates)
    if preset is None:
        return "fairseq2 preset: none has these shapes (a fairseq2 card needs config overrides)"
    return f"fairseq2 preset: {preset} ({fairseq2.PRESETS[preset].family})"
