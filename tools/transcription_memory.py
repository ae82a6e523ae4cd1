"""Peak resident memory of `w2v-transcribe` on many files: a tiny CTC model transcribing N files of
10 s each (default 40 and 400). Prints the figures docs/transcription.md quotes.

    python -m tools.transcription_memory --folder=/tmp/transcription_memory --files=40,400 --runs=3 \\
        [--other_source=/path/to/another/checkout]

`--folder` gets a tiny random CTC model (the `tiny` preset with a letter head: the model's size does
not change with the number of files, so a trained one would measure the same) and the largest number
of 16-bit WAV files of `--seconds` each, made by joining the embedded corpus's utterances, with one
manifest per count (its first N files), unless it holds them already. Each run is then a fresh
process running the `w2v-transcribe` command on a manifest, its transcripts thrown away; its peak
resident set size (Linux's `VmHWM`) is the figure. `--other_source` measures another version of the
package (a checkout whose `w2v_jax/` goes first on the path, e.g. main before streaming) on the same
files, the two versions' processes alternating, so both see the same machine.
"""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import soundfile
from absl import flags
from flax import nnx

from tools.loading_memory import measured_process
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.cli import launch
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio, default_manifest
from w2v_jax.data.manifest import load_manifest, write_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

# One measured process: argv [checkpoint, manifest]; `w2v-transcribe` with its output thrown away,
# then the package's folder and the process's peak resident set size in KiB (VmHWM: a child's
# ru_maxrss would start from its parent's resident size at the fork).
_MEASURED = """
import contextlib, os, sys
import w2v_jax
from w2v_jax.cli import transcribe
sys.argv = ["w2v-transcribe", "--checkpoint=" + sys.argv[1], sys.argv[2]]
try:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        transcribe.run()
except SystemExit as exit:
    if exit.code:
        raise
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(w2v_jax.__path__[0], peak)
"""

MODEL_DIR = "model"


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    return SimpleNamespace(
        folder=flags.DEFINE_string(
            "folder", None, "Model, audio and manifests (written first when absent).", flag_values=flag_values
        ),
        files=flags.DEFINE_list("files", ["40", "400"], "Numbers of files transcribed.", flag_values=flag_values),
        seconds=flags.DEFINE_float("seconds", 10.0, "Length of each file.", flag_values=flag_values),
        runs=flags.DEFINE_integer(
            "runs", 3, "Measured processes per version and count.", lower_bound=1, flag_values=flag_values
        ),
        other_source=flags.DEFINE_string(
            "other_source",
            "",
            "A checkout of another version of the package, measured alternately.",
            flag_values=flag_values,
        ),
    )


def write_inputs(folder: pathlib.Path, counts: Sequence[int], seconds: float) -> dict[int, pathlib.Path]:
    """The model (`folder/model`), `max(counts)` WAV files of `seconds` each and a manifest of the
    first N files for each N in `counts`; returns {N: manifest}."""
    vocabulary = Vocabulary.from_symbols("abcdefghijklmnopqrstuvwxyz'")
    if not (folder / MODEL_DIR).is_dir():
        config = Wav2Vec2Config.preset("tiny", vocab_size=len(vocabulary))
        save_checkpoint(config, Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0)), folder / MODEL_DIR, vocabulary=vocabulary)
    corpus = load_manifest(default_manifest("train"))
    speech = np.concatenate([audio.load_audio(corpus.file_path(i), normalize_audio=False) for i in range(len(corpus))])
    length = int(seconds * audio.SAMPLE_RATE)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(max(counts)):
        path = f"audio/{index:05d}.wav"
        if not (folder / path).is_file():
            start = (index * length) % (len(speech) - length)  # the corpus over again, shifted
            soundfile.write(folder / path, speech[start : start + length], audio.SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    manifests = {}
    for count in counts:
        manifests[count] = folder / f"files_{count}.tsv"
        write_manifest(manifests[count], folder, paths[:count], [length] * count)
    return manifests


def _peak_mib(folder: pathlib.Path, manifest: pathlib.Path, source: str) -> tuple[str, float]:
    """(the measured package's folder, peak RSS in MiB) of one fresh process."""
    return measured_process(_MEASURED, [str((folder / MODEL_DIR).resolve()), str(manifest.resolve())], folder, source)


def peak_memory(
    folder: pathlib.Path, manifests: dict[int, pathlib.Path], runs: int, sources: Sequence[str] = ("",)
) -> dict[str, dict[int, float]]:
    """Median peak RSS (MiB) of `runs` processes transcribing each manifest, per package source
    ("" = the installed one), the sources' processes alternating: {package folder: {files: MiB}}."""
    samples: dict[str, dict[int, list[float]]] = {}
    for _ in range(runs):
        for count, manifest in manifests.items():
            for source in sources:
                package, mib = _peak_mib(folder, manifest, source)
                samples.setdefault(package, {}).setdefault(count, []).append(mib)
    return {package: {n: statistics.median(v) for n, v in by_count.items()} for package, by_count in samples.items()}


def main(argv: list[str], args: SimpleNamespace) -> None:
    del argv
    if not args.folder.value:
        raise SystemExit("--folder is required")
    try:
        counts = [int(n) for n in args.files.value]
    except ValueError as error:
        raise SystemExit(f"--files takes comma-separated whole numbers: {error}") from None
    folder = pathlib.Path(args.folder.value)
    manifests = write_inputs(folder, counts, args.seconds.value)
    sources = ("", args.other_source.value) if args.other_source.value else ("",)
    for package, by_count in peak_memory(folder, manifests, args.runs.value, sources).items():
        figures = ", ".join(f"{n} files {mib:.0f} MiB" for n, mib in by_count.items())
        print(
            f"{package}: w2v-transcribe peak RSS, files of {args.seconds.value:g} s: {figures} "
            f"(medians of {args.runs.value} processes)"
        )


def run() -> None:
    """`python -m tools.transcription_memory`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
