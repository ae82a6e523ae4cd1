"""Former home of the evaluation tools; kept so `from w2v_jax.probing import load_model` still works.

What it held now lives by concern:
- `load_model` (any checkpoint format): `w2v_jax.checkpointing`, re-exported here;
- utterances and alignments (`Utterance`, `load_utterances`, `frame_phone_labels`): `w2v_jax.data.utterances`;
- the validation objective (`validation_metrics`): `w2v_jax.research.validation`;
- linear probes and `evaluate`: `w2v_jax.research.probes`.
"""

from w2v_jax.checkpointing import load_model

__all__ = ["load_model"]
