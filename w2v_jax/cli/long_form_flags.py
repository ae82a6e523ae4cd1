"""The flags of the launchers that read many audio files of any length: chunks (`asr.long_form`)
and what an unreadable file does."""

from __future__ import annotations

from absl import flags

from w2v_jax.asr.long_form import DEFAULT_CHUNK_S


def define_long_form_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--chunk_s`, `--stride_s` (`asr.long_form`) and `--strict` of the launchers that read many audio files."""
    fv = flag_values
    return {
        "chunk_s": flags.DEFINE_float(
            "chunk_s", DEFAULT_CHUNK_S, "Recordings longer than this (seconds) go in chunks.", flag_values=fv
        ),
        "stride_s": flags.DEFINE_float(
            "stride_s",
            None,
            "Overlap on each side of a chunk, seconds (default: a sixth of --chunk_s).",
            flag_values=fv,
        ),
        "strict": flags.DEFINE_bool("strict", False, "Stop at the first unreadable file.", flag_values=fv),
    }
