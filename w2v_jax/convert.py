"""Former home of the checkpoint conversions; kept so the load and save functions documented in
earlier READMEs and notebooks import from here. They live in `w2v_jax.checkpoints`: transformers'
folders in `checkpoints.hf`, our folder format in `checkpoints.folder`."""

from w2v_jax.checkpoints.folder import load_checkpoint, save_checkpoint
from w2v_jax.checkpoints.hf import load_hf_checkpoint, load_vocabulary, save_hf_checkpoint, save_processor_files

__all__ = [
    "load_checkpoint",
    "load_hf_checkpoint",
    "load_vocabulary",
    "save_checkpoint",
    "save_hf_checkpoint",
    "save_processor_files",
]
