"""Regenerates the embedded speech corpus: forwards to `python -m tools.make_tts_corpus` (same flags).

python -m experiments.make_tts_corpus [--out w2v_jax/data/corpus] [--minutes 15.25] [--max_bytes 10000000]
"""

from tools.make_tts_corpus import run

if __name__ == "__main__":
    run()
