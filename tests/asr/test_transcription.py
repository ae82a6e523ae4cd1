"""w2v_jax/asr/transcription.py: exact batched transcription, phone transcripts."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.support.ctc import CONFIG, LAYER_CONFIG, VOCABULARY
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.error_rates import error_rate_metrics
from w2v_jax.asr.transcription import transcribe, transcribe_waveforms
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC


@pytest.mark.parametrize("config", [CONFIG, LAYER_CONFIG], ids=["group", "layer"])
def test_batched_transcripts_equal_one_utterance_at_a_time(config):
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(3))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 300  # varied argmax per frame
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (4000, 7000, 4000, 5200, 9100)]
    batched = transcribe(model, waveforms, VOCABULARY, batch_size=2)
    alone = [transcribe(model, [w], VOCABULARY, batch_size=1)[0] for w in waveforms]
    assert batched == alone
    assert len(set(batched)) > 1 and all(batched)


def test_phone_error_rate_counts_phones_not_strings():
    """Greedy transcripts of a phone model (logits spelling known phones) scored against .phn
    references: PER counts phone edits; concatenated phones would count one "word" per utterance."""
    phones = Vocabulary.from_symbols(["aɪ", "t", "s"])
    ids = [phones.token_to_id[p] for p in ("t", "aɪ", "s")]
    logits = np.full((1, 8, len(phones)), -5.0, np.float32)
    for frame, token in enumerate([ids[0], phones.pad_id, ids[1], ids[1], phones.pad_id, ids[2], ids[2], ids[0]]):
        logits[0, frame, token] = 5.0

    def forward(x, mask):
        return jnp.asarray(logits)

    config = Wav2Vec2Config.preset("tiny", feat_extract_norm="layer", conv_bias=True)
    hypotheses = transcribe_waveforms(
        forward,
        [np.zeros(2560, np.float32)],
        phones,
        config,
        batch_size=1,
        num_frames=lambda n: n // 320,
        exact=False,
        separator=SEPARATORS["phn"],
    )
    assert hypotheses == ["t aɪ s t"]
    # One insertion (s) against 3 reference phones; "taɪst" against "taɪt" would score 1.0.
    assert error_rate_metrics(["t aɪ t"], hypotheses, "phn") == {"per": pytest.approx(1 / 3)}
