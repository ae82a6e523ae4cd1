"""Conversions between checkpoint formats: `convert(direction, source, destination)`.

- `hf-to-jax`: a transformers folder (`Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` or `Wav2Vec2Model`:
  config.json + model.safetensors or pytorch_model.bin) -> our folder (config.json + params.safetensors);
- `jax-to-hf`: a training workdir (its newest checkpoint or `step`; a fine-tuning workdir's best
  model by default) or our folder -> a transformers folder that `from_pretrained`,
  `AutoFeatureExtractor` and the pipelines load.
- `fairseq-to-jax`: a fairseq `.pt` (pretraining or CTC fine-tuned; a CTC model's `dict.ltr.txt`
  from `dictionary` or beside the file) -> our folder;
- `jax-to-fairseq`: a training workdir, our folder or a transformers folder -> a fairseq `.pt`
  (`fairseq.save_fairseq_checkpoint`; needs torch, the `reference` extra).

A CTC model's vocabulary (vocab.json and the tokenizer's special tokens) goes with it both ways.
"""

from __future__ import annotations

import os
import pathlib

from w2v_jax.checkpoints import fairseq, folder, hf
from w2v_jax.checkpoints.checkpointer import has_checkpoints
from w2v_jax.checkpoints.loading import input_normalization, load_model
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR
from w2v_jax.model import Wav2Vec2ForCTC

FAIRSEQ_DIRECTIONS = ("fairseq-to-jax", "jax-to-fairseq")
DIRECTIONS = ("hf-to-jax", "jax-to-hf", *FAIRSEQ_DIRECTIONS)


def convert(
    direction: str,
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    step: int | None = None,
    allow_nonfinite: bool = False,
    dictionary: str | os.PathLike | None = None,
) -> str | None:
    """Writes `source` in the other format at `destination` (see the module docstring).

    Args:
      direction: one of `DIRECTIONS`.
      source, destination: folders (`source` may be a training workdir for `jax-to-hf`).
      step: `jax-to-hf` from a training workdir: its checkpoint step.
      allow_nonfinite: convert weights holding NaN or infinity (refused by default).
      dictionary: `fairseq-to-jax`: a CTC model's `dict.ltr.txt` (default: beside the `.pt`).

    Returns:
      For `fairseq-to-jax`, what was read and skipped (`FairseqImport.summary`); else None.

    Raises:
      ValueError: an unknown direction, or `step` for a source that is not a training workdir.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
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
