"""Regenerates the embedded speech corpus: forwards to `python -m tools.make_tts_corpus` (same flags).

    python -m experiments.make_tts_corpus [--out w2v_jax/data/corpus] [--minutes 15.25] [--max-bytes 10000000]
"""

from absl import app, flags

from tools import make_tts_corpus

flags.adopt_module_key_flags(make_tts_corpus)

if __name__ == "__main__":
    app.run(make_tts_corpus.main)
