"""w2v_jax/asr/decoding.py: greedy CTC decoding gives transformers' tokenizer text."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Wav2Vec2CTCTokenizer

from w2v_jax.asr.decoding import greedy_decode, greedy_frame_ids
from w2v_jax.data.vocabulary import Vocabulary


def test_greedy_frame_ids_is_argmax_with_padding():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((5, 14, 7)).astype(np.float32)
    lengths = np.array([14, 9, 12, 1, 8])
    ids = np.asarray(jax.jit(greedy_frame_ids)(logits, lengths))
    expected = np.where(np.arange(logits.shape[1])[None, :] < lengths[:, None], logits.argmax(-1), -1)
    np.testing.assert_array_equal(ids, expected)


def test_greedy_decode_gives_the_tokenizer_text(tmp_path):
    vocabulary = Vocabulary.from_symbols("abc'")
    vocabulary.save(tmp_path)
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 20, len(vocabulary))).astype(np.float32)
    logits[:, :, vocabulary.pad_id] += 1.0  # blanks frequent, as in a trained model
    logits[0, :, vocabulary.pad_id] += 100.0  # all blank
    lengths = np.array([20, 20, 17, 9, 3, 1])
    texts = greedy_decode(jnp.asarray(logits), jnp.asarray(lengths), vocabulary)
    expected = [tokenizer.decode(torch.tensor(logits[b, : lengths[b]]).argmax(-1)) for b in range(6)]
    assert texts == expected and texts[0] == ""
    assert json.loads((tmp_path / "vocab.json").read_text())["<pad>"] == 0
