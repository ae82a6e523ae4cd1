"""Speech recognition on top of a pretrained encoder: CTC fine-tuning, decoding, error rates.

- `objective`: the CTC objective of the train step;
- `decoding`: logits to transcripts: the `CTCDecoder` interface, greedy decoding;
- `beam_search`: CTC beam search with an n-gram LM and a lexicon (flashlight-text, the `decode` extra);
- `lm`: n-gram LMs (modified Kneser-Ney estimation, ARPA files) and lexicons;
- `processor_lm`: LMs in transformers' `Wav2Vec2ProcessorWithLM` folders;
- `error_rates`: WER, CER, PER;
- `transcription`: transcripts of waveforms and audio files; `long_form`: recordings of any length, in
  chunks; `alignment`: CTC forced alignment; `timestamps`: token and word times, alignment of files;
- `evaluator`: validation inside fine-tuning (best checkpoint), a checkpoint's error rates, decoders
  compared and LM weights swept;
- `task`: fine-tuning as a task of the training loop.

Importing the room imports none of them: each is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.asr import (
        alignment,
        beam_search,
        decoding,
        error_rates,
        evaluator,
        lm,
        long_form,
        objective,
        processor_lm,
        task,
        timestamps,
        transcription,
    )

__all__ = [
    "alignment",
    "beam_search",
    "decoding",
    "error_rates",
    "evaluator",
    "lm",
    "long_form",
    "objective",
    "processor_lm",
    "task",
    "timestamps",
    "transcription",
]
