"""The seed notebook's pictures for any checkpoint: waveform, latents z, quantized q, |c - q|.

    python -m experiments.plot_representations --checkpoint=runs/tiny --out=runs/tiny/representations.png
    python -m experiments.plot_representations --checkpoint=hf_folder --audio=speech.flac --out=reps.png

`--checkpoint` is a training workdir, a `convert.save_checkpoint` folder or a transformers folder;
`--audio` any file the data pipeline reads (default: the first utterance of the embedded corpus'
valid split), normalised as in training.
"""

import pathlib

from absl import app, flags

from w2v_jax.checkpointing import load_model
from w2v_jax.cli import launch
from w2v_jax.data import default_manifest, load_audio, load_manifest
from w2v_jax.research import plotting, probes

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir or checkpoint folder.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a training workdir (default: newest).")
_AUDIO = flags.DEFINE_string("audio", None, "Audio file (default: first utterance of the corpus valid split).")
_OUT = flags.DEFINE_string("out", "representations.png", "The PNG to write.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    audio = _AUDIO.value or load_manifest(default_manifest("valid")).file_path(0)
    waveform = load_audio(audio)
    model = load_model(_CHECKPOINT.value, _STEP.value)
    figure = plotting.representation_figure(
        waveform, probes.representations(model, waveform), title=f"{_CHECKPOINT.value}: {pathlib.Path(audio).name}"
    )
    figure.savefig(_OUT.value, dpi=100)
    print(f"wrote {_OUT.value}")


def run() -> None:
    """The `w2v-plot-representations` command."""
    launch(main)


if __name__ == "__main__":
    run()
