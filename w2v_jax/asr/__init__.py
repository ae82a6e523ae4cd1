"""Speech recognition on top of a pretrained encoder: CTC fine-tuning, decoding, error rates.

- `objective`: the CTC objective of the train step;
- `decoding`: logits to transcripts: the `CTCDecoder` interface, greedy decoding;
- `beam_search`: CTC beam search with an n-gram LM and a lexicon (flashlight-text, the `decode` extra);
- `lm`: n-gram LMs (modified Kneser-Ney estimation, ARPA files) and lexicons;
- `processor_lm`: LMs in transformers' `Wav2Vec2ProcessorWithLM` folders;
- `error_rates`: WER, CER, PER;
- `transcription`: transcripts of waveforms and audio files;
- `evaluator`: validation inside fine-tuning (best checkpoint), a checkpoint's error rates, decoders
  compared and LM weights swept;
- `task`: fine-tuning as a task of the training loop.
"""
