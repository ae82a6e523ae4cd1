"""The checkpoint flags of the launchers that load a model: `--checkpoint`, `--step` and, for a
fine-tuned one, `--labels`."""

from __future__ import annotations

from absl import flags

from w2v_jax.asr.decoding import SEPARATORS


def define_checkpoint_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--checkpoint` (any format `checkpoints.load_model` reads) and `--step` (a workdir's checkpoint)."""
    return {
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "Training workdir or checkpoint folder.", required=True, flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step of a training workdir (default: newest).", flag_values=flag_values
        ),
    }


def define_ctc_checkpoint_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--checkpoint` (a fine-tuning workdir or CTC checkpoint), `--step` (default: the workdir's best
    model) and `--labels` (ltr or phn), the flags of every launcher that runs a fine-tuned model."""
    return {
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "Fine-tuning workdir or CTC checkpoint folder.", required=True, flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step of a workdir (default: its best model).", flag_values=flag_values
        ),
        "labels": flags.DEFINE_enum(
            "labels",
            "ltr",
            sorted(SEPARATORS),
            "The model's labels: ltr (letters joined) or phn (phones separated by spaces).",
            flag_values=flag_values,
        ),
    }
