"""Maintenance tools outside the library: `python -m tools.make_tts_corpus` regenerates the embedded corpus."""
