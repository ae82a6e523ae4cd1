"""Checkpoint formats and loading a model from any of them.

- `loading`: `load_model(path, step=None)` (a training workdir, our folder, a transformers folder, a fairseq `.pt`),
  `load_encoder`, `load_ctc_checkpoint`;
- `hf`: transformers' folders, both directions, with a CTC model's vocabulary and processor files;
- `fairseq`: fairseq's `.pt` files (pretraining and CTC), read without fairseq or torch through a
  restricted unpickler, and written back (torch);
- `folder`: our folder format (`config.json` + `params.safetensors`);
- `weights`: what the formats share (which model the weights fill, checks on untrusted weights);
- `conversion`: one format to another (`w2v-convert-checkpoint`).

Importing the room imports none of them: each name below is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.checkpoints import conversion, fairseq, folder, hf, loading, weights
    from w2v_jax.checkpoints.loading import load_ctc_checkpoint, load_encoder, load_model

__all__ = [
    "conversion",
    "fairseq",
    "folder",
    "hf",
    "load_ctc_checkpoint",
    "load_encoder",
    "load_model",
    "loading",
    "weights",
]
