"""Input pipeline throughput: audio-seconds per second decoded, normalised, cropped and batched.

    python -m experiments.benchmark_input [--manifest M] [--workers 0,1,2] [--batch-size 8] [--batches 60]
    python -m experiments.benchmark_input --vs-train-step tiny,small [--workers 0,2]

For each worker count: seconds to the first batch (worker start-up) and the steady-state rate over
--batches batches after --warmup. Audio-seconds count real (attention_mask) samples at 16 kHz. 0
workers = background threads in this process.

`--vs-train-step` compares, in the same run, with what train steps consume: for each named variant
of experiments/configs/pretrain.py, the loader runs with that config's batch size and crop lengths,
then the config's train step is timed (`w2v_jax.research.benchmark`) on batches of the mean length
the loader produced, and `ratio=` is the loader's audio-seconds per second over the step's. All
logic: `w2v_jax.research.input_benchmark`.
"""

from absl import app, flags

from w2v_jax.cli import launch
from w2v_jax.configs import pretrain
from w2v_jax.data import default_manifest
from w2v_jax.research import input_benchmark

_MANIFEST = flags.DEFINE_string("manifest", str(default_manifest("train")), "TSV manifest or folder.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Comma-separated worker counts.")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 8, "Utterances per batch.")
_BATCHES = flags.DEFINE_integer("batches", 60, "Timed batches.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first.")
_PAD = flags.DEFINE_bool("pad", False, "Pad mode (default: crop to the batch's shortest).")
_MAX_SAMPLE_SIZE = flags.DEFINE_integer("max-sample-size", 250_000, "Longest crop in samples.")
_MIN_SAMPLE_SIZE = flags.DEFINE_integer("min-sample-size", 32_000, "Shortest utterance kept, in samples.")
_VS_TRAIN_STEP = flags.DEFINE_list("vs-train-step", [], "Comma-separated pretrain config variants to compare with.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workers = [int(w) for w in _WORKERS.value]
    if _VS_TRAIN_STEP.value:
        for variant in _VS_TRAIN_STEP.value:
            lines = input_benchmark.loader_vs_train_step(
                _MANIFEST.value, variant, pretrain.get_config(variant), workers,
                batches=_BATCHES.value, warmup=_WARMUP.value,
            )
            print("\n".join(lines), flush=True)
        return
    print(f"manifest {_MANIFEST.value}, batch {_BATCH_SIZE.value}, {'pad' if _PAD.value else 'crop'} mode, "
          f"crops {_MIN_SAMPLE_SIZE.value}-{_MAX_SAMPLE_SIZE.value} samples")
    for count in workers:
        result = input_benchmark.measure_loader(
            _MANIFEST.value, num_workers=count, batch_size=_BATCH_SIZE.value, batches=_BATCHES.value,
            warmup=_WARMUP.value, pad=_PAD.value, max_sample_size=_MAX_SAMPLE_SIZE.value,
            min_sample_size=_MIN_SAMPLE_SIZE.value,
        )
        print(f"workers={count}: {result['audio_s_per_s']:8.1f} audio-s/s  {result['batches_per_s']:6.2f} batches/s  "
              f"(first {_WARMUP.value} batches after {result['startup_s']:.1f} s)", flush=True)


def run() -> None:
    """The `w2v-benchmark-input` command."""
    launch(main)


if __name__ == "__main__":
    run()
