"""w2v_jax: wav2vec 2.0 self-supervised speech pretraining in JAX/Flax NNX.

Importing the package hands the checkpoint loader (`checkpoints.load_model`, which builds models and
reads training checkpoints, so it sits above the model layer) down to the model classes, where
`Wav2Vec2ForPreTraining.from_pretrained` calls it.
"""

from w2v_jax import model as _model
from w2v_jax.checkpoints.loading import load_model as _load_model

__version__ = "0.1.0"

_model.set_pretrained_loader(_load_model)
