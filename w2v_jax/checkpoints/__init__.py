"""Checkpoint formats and loading a model from any of them.

- `loading`: `load_model(path, step=None)` (a training workdir, our folder, a transformers folder, a fairseq or
  fairseq2 `.pt`),
  `load_encoder`, `load_ctc_checkpoint`;
- `hf`: transformers' folders, both directions, with a CTC model's vocabulary and processor files;
- `fairseq`: fairseq's `.pt` files (pretraining and CTC), read without fairseq or torch, and written
  back (torch);
- `fairseq2`: fairseq2's `.pt` files (pretraining and CTC, Omnilingual's included, their presets
  named from the shapes), read without fairseq2 or torch, and written back (torch);
- `torch_files`: torch's file format (`.pt`, `pytorch_model.bin`) read without torch through a
  restricted unpickler;
- `folder`: our folder format (`config.json` + `params.safetensors`);
- `weights`: what the formats share (which model the weights fill, checks on untrusted weights);
- `conversion`: one format to another (`w2v-convert-checkpoint`);
- `checkpointer`: a training run's state in orbax checkpoints with checksums, read whole (resume) or
  in part (the model's variables alone, `load_model`);
- `run_layout`: the file names of a training run's directory.

Importing the room imports none of them: each name below is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.checkpoints import (
        checkpointer,
        conversion,
        fairseq,
        fairseq2,
        folder,
        hf,
        loading,
        run_layout,
        torch_files,
        weights,
    )
    from w2v_jax.checkpoints.loading import load_ctc_checkpoint, load_encoder, load_model

__all__ = [
    "checkpointer",
    "conversion",
    "fairseq",
    "fairseq2",
    "folder",
    "hf",
    "load_ctc_checkpoint",
    "load_encoder",
    "load_model",
    "loading",
    "run_layout",
    "torch_files",
    "weights",
]
