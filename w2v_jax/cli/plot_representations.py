"""The seed notebook's pictures for any checkpoint: waveform, latents z, quantized q, |c - q|.

    w2v-plot-representations --checkpoint=runs/tiny --out=runs/tiny/representations.png
    w2v-plot-representations --checkpoint=hf_folder --audio=speech.flac --out=reps.png

`--checkpoint` is a training workdir, our folder (`checkpoints.folder.save_checkpoint`) or a transformers folder;
`--audio` any file the data pipeline reads (default: the first utterance of the embedded corpus'
valid split), normalised as in training.
"""

import pathlib
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.checkpoints.loading import load_model
from w2v_jax.cli.checkpoint_flags import define_checkpoint_flags
from w2v_jax.cli.launching import launch
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import load_audio
from w2v_jax.data.manifest import load_manifest
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import plotting, probes


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        **define_checkpoint_flags(fv),
        audio=flags.DEFINE_string(
            "audio", None, "Audio file (default: first utterance of the corpus valid split).", flag_values=fv
        ),
        out=flags.DEFINE_string("out", "representations.png", "The PNG to write.", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    audio = args.audio.value or load_manifest(default_manifest("valid")).file_path(0)
    waveform = load_audio(audio)
    model = load_model(args.checkpoint.value, args.step.value)
    if not isinstance(model, Wav2Vec2ForPreTraining):
        raise app.UsageError(
            f"--checkpoint {args.checkpoint.value} holds a {type(model).__name__}: the figure needs a pretraining "
            "model's quantizer and projections (Wav2Vec2ForPreTraining)"
        )
    figure = plotting.representation_figure(
        waveform, probes.representations(model, waveform), title=f"{args.checkpoint.value}: {pathlib.Path(audio).name}"
    )
    figure.savefig(args.out.value, dpi=100)
    print(f"wrote {args.out.value}")


def run() -> None:
    """The `w2v-plot-representations` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
