"""The phone probe's flags (`research.probes`), of the launchers that run it: evaluate, sweep."""

from __future__ import annotations

from absl import flags

from w2v_jax.research import probes


def define_probe_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--held_out_voices` and `--probe_steps`, the phone probe's protocol (`research.probes`)."""
    return {
        "held_out_voices": flags.DEFINE_list(
            "held_out_voices",
            list(probes.DEFAULT_HELD_OUT_VOICES),
            "Voices (espeak-ng variants, e.g. m2) held out of the phone probe's training set; empty: none.",
            flag_values=flag_values,
        ),
        "probe_steps": flags.DEFINE_integer(
            "probe_steps", 300, "Adam iterations of each linear probe.", flag_values=flag_values
        ),
    }
