"""Speech recognition on top of a pretrained encoder: CTC fine-tuning, decoding, error rates.

- `objective`: the CTC objective of the train step;
- `decoding`: logits to transcripts (greedy);
- `error_rates`: WER, CER, PER;
- `transcription`: transcripts of waveforms and audio files;
- `evaluator`: validation inside fine-tuning (best checkpoint) and a checkpoint's error rates;
- `task`: fine-tuning as a task of the training loop.
"""
