"""Training-step benchmark: our jit-compiled train step beside the PyTorch reference's.

`run_benchmark` times, in one process and on one device, warm-up then `steps` full training
updates (forward, backward, optimizer) of the two below; the timed steps alternate between them,
so a shared machine's changing load hits both alike. What is trained is the config's task, set up
by the trainer's own `Task` (`benchmark_task`): pretraining, or CTC fine-tuning for a
`w2v_jax/configs/finetune.py` config (its vocabulary, model, objective, optimizer and `init`).

- w2v_jax: `train_step.train_step` with the task's objective (the trainer's step: masks,
  distractors and Gumbel noise sampled on the device from the step's key, donated state),
  compiled ahead of time once for the batch shape, so the timed loop cannot recompile;
- the reference (with `vs_pytorch`): the PyTorch twin (`torch_twin.ReferenceTrainer`:
  transformers' `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC` with the same config and initial
  weights, switched to PyTorch's fused `scaled_dot_product_attention` so it runs at its best, the
  gradient normalised as ours, our clipping and `torch.optim.AdamW` with our recipe's
  hyper-parameters, the same frozen parameters), fed the batch and the masks (and distractors)
  our step draws (the same keys re-derived on the host). Pretraining: the masked-frame counts of
  both are checked to agree. Fine-tuning: the first step's losses are printed side by side (equal
  up to float32 rounding when the config has no dropout, which torch draws from its own generator).

The batch is unit-variance noise, every utterance `seconds` long; fine-tuning adds random labels
from the vocabulary at `LETTERS_PER_SECOND`.

Both run the same work per step: the config's LayerDrop is set to 0 (a random number of skipped
layers would make step times random); dropouts stay as configured on both sides.

Reported per framework: median step time, audio-seconds per second, model FLOPs per step (XLA's cost analysis of our
compiled step; the same count is used for the reference, which runs the same model; with remat it includes the
recomputation), achieved FLOP/s and its fraction of a matmul peak measured in the same run on the same device (model
FLOPs utilisation), compile time, and peak memory (GPU: the device allocator's peak; CPU: XLA's memory analysis of the
compiled step and the process's peak resident memory during the timed steps). Throughputs are only comparable within
one run: the benchmark machine may be shared.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from w2v_jax import sharding
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.asr.task import FineTuningTask
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.vocabulary import BOS, EOS, Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.reference import import_reference
from w2v_jax.research.torch_twin import ReferenceTrainer, flat_negative_indices
from w2v_jax.training import compute, host_memory, optim, train_step
from w2v_jax.training_draws import sample_masks_and_negatives, sample_training_masks

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}
# Letters and word delimiters per second of read speech (LibriSpeech: about 2.7 words of 4-5 letters).
LETTERS_PER_SECOND = 15.0
_MIB = 2**20


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """What is timed.

    Attributes:
      batch_size: utterances per step.
      seconds: length of each utterance (`num_samples`: seconds * SAMPLE_RATE).
      steps: timed steps (at least 1; the issue asks for >= 5).
      warmup: untimed steps before them (first-call effects, allocator warm-up).
      precision: "float32" or "bfloat16" (computation dtype; parameters stay float32).
      remat: rematerialise the Transformer layers in the backward pass.
      seed: parameters, waveforms and the step key.
    """

    batch_size: int = 4
    seconds: float = 4.0
    steps: int = 5
    warmup: int = 2
    precision: str = "float32"
    remat: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={self.steps}, warmup={self.warmup}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))


@dataclasses.dataclass
class StepTimings:
    """One framework's measurements.

    Attributes:
      framework: "w2v_jax" or "pytorch".
      device: where it ran.
      step_seconds: wall time of each timed step.
      audio_seconds_per_step: batch_size * seconds.
      flops_per_step: model FLOPs of one update (XLA's count of our compiled step).
      peak_flops_per_second: the matmul peak measured in this run on this device.
      compile_seconds: tracing + compiling (None for eager PyTorch).
      memory: named byte counts; `memory_source` says what they are.
      memory_source: how `memory` was measured.
      minor_faults: the process's minor page faults during each timed step (pages the kernel
        had to map and zero: a step that reuses its buffers takes almost none).
    """

    framework: str
    device: str
    step_seconds: list[float]
    audio_seconds_per_step: float
    flops_per_step: float
    peak_flops_per_second: float
    compile_seconds: float | None
    memory: dict[str, int]
    memory_source: str
    minor_faults: list[int]

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds_per_step / self.median_step_seconds

    @property
    def flops_per_second(self) -> float:
        return self.flops_per_step / self.median_step_seconds

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: achieved FLOP/s over the measured matmul peak."""
        return self.flops_per_second / self.peak_flops_per_second

    def line(self) -> str:
        """One `key=value` line (the fields the performance tables and the tests read)."""
        compile_s = "none(eager)" if self.compile_seconds is None else f"{self.compile_seconds:.2f}"
        memory = " ".join(f"{k}_mib={v / _MIB:.1f}" for k, v in self.memory.items())
        return (
            f"{self.framework}: device={self.device} median_step_s={self.median_step_seconds:.4f} "
            f"audio_s_per_s={self.audio_seconds_per_second:.2f} flops_per_step={self.flops_per_step:.4g} "
            f"achieved_flops_per_s={self.flops_per_second:.4g} mfu={self.mfu:.4f} compile_s={compile_s} "
            f"{memory} memory_source={self.memory_source!r} "
            f"minor_faults_per_step={statistics.median(self.minor_faults):.0f} "
            f"steps_s=[{', '.join(f'{s:.4f}' for s in self.step_seconds)}]"
        )


def benchmark_config(model: Wav2Vec2Config) -> Wav2Vec2Config:
    """The model config as benchmarked: LayerDrop 0, so every step does the same work."""
    return model.replace(layerdrop=0.0)


def make_waveforms(settings: BenchmarkSettings) -> np.ndarray:
    """`[batch, samples]` float32 unit-variance noise (what normalised audio looks like to the model)."""
    rng = np.random.default_rng(settings.seed)
    return rng.standard_normal((settings.batch_size, settings.num_samples), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
    """What is trained, as the trainer's `Task` for the config sets it up (`benchmark_task`).

    Attributes:
      name: the task's name ("pretrain" or "finetune").
      model_config: the model, LayerDrop 0 (`benchmark_config`).
      model_class: `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC`.
      optimizer, hparams: the task's optimizer and step settings (its objective).
      optimizer_settings: the optimizer's settings, for the PyTorch twin.
      initial_state: the task's state of a fresh run (fine-tuning: `init`'s encoder put in).
      vocabulary: the CTC head's tokens (fine-tuning), else None.
    """

    name: str
    model_config: Wav2Vec2Config
    model_class: type[Wav2Vec2ForPreTraining] | type[Wav2Vec2ForCTC]
    optimizer: optax.GradientTransformation
    hparams: train_step.StepHyperparams
    optimizer_settings: optim.OptimizerSettings
    initial_state: Callable[[train_step.TrainState], train_step.TrainState]
    vocabulary: Vocabulary | None = None

    def num_frames(self, num_samples: int) -> int:
        return int(nnx.eval_shape(lambda: self.model_class(self.model_config)).num_frames(num_samples))


def benchmark_task(config: ml_collections.ConfigDict) -> BenchmarkTask:
    """The task of a run config, set up by the trainer's `Task` as for a fresh run (nothing written).

    A fine-tuning config (`w2v_jax/configs/finetune.py`, which has `data.labels`) is set up by
    `asr.task.FineTuningTask`: its vocabulary (from the training labels or `data.vocabulary`),
    model (`init`'s architecture when given), `CTCObjective` and optimizer; any other config by
    `pretraining.task.PretrainingTask`.
    """
    task = FineTuningTask() if "labels" in config.data else PretrainingTask()
    with tempfile.TemporaryDirectory() as workdir:
        task.prepare(config, pathlib.Path(workdir), primary=False)  # not primary: writes nothing
    optimizer, hparams = task.optimizer_and_hyperparams(config)
    return BenchmarkTask(
        name=task.name,
        model_config=benchmark_config(task.model_config(config)),
        model_class=task.model_class,
        optimizer=optimizer,
        hparams=hparams,
        optimizer_settings=optim.OptimizerSettings.from_train_config(config.train),
        initial_state=task.initial_state,
        vocabulary=getattr(task, "vocabulary", None),
    )


def make_batch(task: BenchmarkTask, settings: BenchmarkSettings) -> dict[str, np.ndarray]:
    """The benchmark's batch: `make_waveforms`, and for fine-tuning the attention mask (every sample
    real) and labels `[batch, labels]`: random symbols of the vocabulary (no special token),
    `LETTERS_PER_SECOND` of audio, at most half the frames (so every alignment exists)."""
    waveforms = make_waveforms(settings)
    if task.vocabulary is None:
        return {"input_values": waveforms}
    vocabulary = task.vocabulary
    special = {vocabulary.pad_token, vocabulary.unk_token, BOS, EOS}
    symbols = np.array([i for i, token in enumerate(vocabulary.tokens) if token not in special])
    num_labels = max(1, min(round(LETTERS_PER_SECOND * settings.seconds), task.num_frames(settings.num_samples) // 2))
    rng = np.random.default_rng(settings.seed + 1)
    return {
        "input_values": waveforms,
        "attention_mask": np.ones(waveforms.shape, np.int32),
        "labels": rng.choice(symbols, (settings.batch_size, num_labels)).astype(np.int32),
    }


class PeakResidentMemory:
    """The process's peak resident set size (Linux VmHWM), reset at `reset()`.

    Writing 5 to /proc/self/clear_refs resets the high-water mark, so each framework's peak is
    measured over its own steps (it still includes what the process already held: interpreter,
    both frameworks' libraries and weights).
    """

    @staticmethod
    def reset() -> None:
        pathlib.Path("/proc/self/clear_refs").write_text("5")

    @staticmethod
    def peak_bytes() -> int:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmHWM in /proc/self/status")


def step_masks(
    model_config: Wav2Vec2Config, key: jax.Array, step: int, batch_size: int, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """The span masks `[batch, frames]` and distractors `[batch, frames, K]` our step draws at `step`.

    Our train step hands the model `train_step.model_key(key, step, 0)` (no attention mask: every
    utterance is `frames` long); this re-draws the model's masks and distractors for the reference.
    """
    mask, negatives = sample_masks_and_negatives(train_step.model_key(key, step, 0), model_config, batch_size, frames)
    return np.asarray(mask), np.asarray(negatives)


@dataclasses.dataclass
class CompiledStep:
    """Our train step compiled for one batch shape, with XLA's analyses of it."""

    run: Callable[..., Any]
    compile_seconds: float
    flops: float
    memory: Any  # jax's CompiledMemoryStats


def compile_train_step(
    task: BenchmarkTask, settings: BenchmarkSettings, device: jax.Device
) -> tuple[CompiledStep, train_step.TrainState]:
    """Creates the task's train state on `device` and compiles `train_step.train_step` ahead of time
    for the batch (`make_batch`'s shapes).

    Returns:
      (the compiled step, the initial state).
    """
    mesh = sharding.make_mesh(devices=[device])
    graphdef, state, state_shardings = train_step.create_train_state(
        task.model_config,
        task.optimizer,
        seed=settings.seed,
        mesh=mesh,
        dtype=PRECISIONS[settings.precision],
        remat=settings.remat,
        model_class=task.model_class,
    )
    state = task.initial_state(state)
    step = jax.jit(
        functools.partial(train_step.train_step, graphdef=graphdef, optimizer=task.optimizer, hparams=task.hparams),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in make_batch(task, settings).items()}
    key = jax.random.key(settings.seed)
    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    if cost is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no cost analysis of the compiled step")
    return CompiledStep(compiled, compile_seconds, float(cost["flops"]), compiled.memory_analysis()), state


def device_memory_bytes(device: jax.Device) -> int:
    """What the device can hold: its allocator's limit (GPU, TPU), the machine's memory on CPU."""
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fill_batch(
    config: ml_collections.ConfigDict,
    settings: BenchmarkSettings,
    fraction: float,
    *,
    probe_batch: int = 4,
    device: jax.Device | None = None,
) -> tuple[int, str]:
    """The largest batch whose train step is estimated to fit in `fraction` of the device's memory.

    Compiles the step (nothing runs) at `probe_batch` utterances of `settings.seconds` and scales
    XLA's memory analysis linearly: `fraction * capacity >= arguments + batch * temporaries /
    probe_batch`. XLA's temporaries grow a little faster than the batch (tests/research/test_benchmark.py
    bounds the error), so `fraction` below 1 is the headroom. Beside the PyTorch reference in the
    same process, leave the reference its share (0.3 for ours: both allocators keep what they have
    used, and transformers in autocast holds more per utterance).

    Returns:
      (the batch, a report line with the figures it came from).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fill fraction must be in (0, 1], got {fraction}")
    device = device or jax.devices()[0]
    task = benchmark_task(config)
    compiled, state = compile_train_step(task, dataclasses.replace(settings, batch_size=probe_batch), device)
    del state
    capacity = device_memory_bytes(device)
    per_utterance = compiled.memory.temp_size_in_bytes / probe_batch
    fixed = compiled.memory.argument_size_in_bytes
    batch = max(1, int((fraction * capacity - fixed) // per_utterance))
    line = (
        f"fill_batch={batch} capacity_mib={capacity / _MIB:.0f} fraction={fraction} probe_batch={probe_batch} "
        f"seconds={settings.seconds} precision={settings.precision} remat={settings.remat} "
        f"temp_per_utterance_mib={per_utterance / _MIB:.1f} arguments_mib={fixed / _MIB:.1f} "
        f"probe_compile_s={compiled.compile_seconds:.1f}"
    )
    return batch, line


def xla_memory(stats: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled program: temporaries (activations, workspace), arguments,
    outputs, and the donated bytes outputs reuse."""
    return {
        "xla_temp": int(stats.temp_size_in_bytes),
        "xla_arguments": int(stats.argument_size_in_bytes),
        "xla_outputs": int(stats.output_size_in_bytes),
        "xla_aliased": int(stats.alias_size_in_bytes),
    }


def _describe(device: jax.Device) -> str:
    if device.platform == "cpu":
        return f"cpu({os.cpu_count()}-cores,{platform.processor() or platform.machine()})"
    return f"{device.platform}({device.device_kind})"


class JaxRunner:
    """Our train step, compiled ahead of time for the benchmark batch; `step()` runs one update."""

    def __init__(self, task: BenchmarkTask, settings: BenchmarkSettings, device: jax.Device):
        self.device = device
        self.compiled, self.state = compile_train_step(task, settings, device)
        # Host copies, taken before the first step donates the state: the reference starts from them.
        self.initial_params = jax.device_get(self.state.params)
        self.batch = {k: jax.device_put(v, device) for k, v in make_batch(task, settings).items()}
        self.key = jax.random.key(settings.seed)
        self.metrics: list[dict[str, jax.Array]] = []

    def step(self) -> None:
        """One update, waited for (the timing needs it; the trainer's loop doesn't wait)."""
        self.state, metrics = self.compiled.run(self.state, self.batch, self.key)
        self.metrics.append(metrics)
        jax.block_until_ready(self.state)

    def values(self, name: str) -> list[float]:
        """A metric of every step so far (e.g. "num_masked", "loss")."""
        return [float(m[name]) for m in jax.device_get(self.metrics)]

    def memory(self, peak_rss: int) -> tuple[dict[str, int], str]:
        memory = xla_memory(self.compiled.memory)
        if self.device.platform == "cpu":
            memory["peak_rss"] = peak_rss
            return memory, "XLA memory analysis of the compiled step; process peak RSS during its timed steps"
        stats = self.device.memory_stats() or {}
        memory["device_peak"] = int(stats.get("peak_bytes_in_use", 0))
        return memory, "XLA memory analysis of the compiled step; device allocator peak_bytes_in_use"


class TorchRunner:
    """The PyTorch twin (`torch_twin.ReferenceTrainer`), fed our batch and our step's masks.

    Runs on CUDA when torch has it, else on the CPU (a CPU-only torch beside a GPU shows in the
    device field), with PyTorch's fused attention (the reference at its fastest; the parity
    tests use eager) and, for bfloat16, `torch.autocast`.
    """

    def __init__(self, task: BenchmarkTask, settings: BenchmarkSettings, params: Any):
        torch = import_reference("torch", "w2v-benchmark --vs_pytorch")
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.trainer = ReferenceTrainer(
            task.model_config,
            params,
            task.optimizer_settings,
            task.hparams,
            device=self.device,
            attention="sdpa",
            autocast_dtype=torch.bfloat16 if settings.precision == "bfloat16" else None,
        )
        self.batch = {
            k: torch.from_numpy(v.astype(np.int64) if v.dtype.kind == "i" else v).to(self.device)
            for k, v in make_batch(task, settings).items()
        }
        model_config, rows, frames = task.model_config, settings.batch_size, task.num_frames(settings.num_samples)
        key = jax.random.key(settings.seed)
        # Drawn before any timing (with JAX on the host), so a timed step is PyTorch work only.
        self.inputs: list[dict[str, Any]] = []
        for step in range(settings.warmup + settings.steps):
            objective = task.hparams.objective
            if isinstance(objective, CTCObjective):  # the trainer's `is_ctc`
                # The model sees the attention mask (so its real frame counts) only when the objective passes it.
                lengths = np.full(rows, frames) if objective.use_attention_mask else None
                time_mask, feature_mask = sample_training_masks(
                    train_step.model_key(key, step, 0), model_config, rows, frames, lengths
                )
                if time_mask is not None:
                    time_mask = torch.from_numpy(np.array(time_mask)).to(self.device)
                self.inputs.append(
                    {
                        "mask_time_indices": time_mask,
                        "feature_mask": None if feature_mask is None else np.array(feature_mask),
                    }
                )
            else:
                mask, negatives = step_masks(model_config, key, step, rows, frames)
                self.inputs.append(
                    {
                        "mask_time_indices": torch.from_numpy(mask.copy()).to(self.device),
                        "flat_negatives": torch.from_numpy(flat_negative_indices(negatives)).to(self.device),
                    }
                )
        self.updates: list[Any] = []

    def step(self) -> None:
        """One update on the masks (and distractors) our step draws at the same step number."""
        inputs = self.inputs[self.trainer.step_count]
        if self.trainer.is_ctc:
            update = self.trainer.update_ctc(
                self.batch["input_values"], self.batch["labels"], self.batch["attention_mask"], **inputs
            )
        else:
            update = self.trainer.update(self.batch["input_values"], **inputs)
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        self.updates.append(update)

    def values(self, name: str) -> list[float]:
        """ "num_masked" (pretraining) or "loss" (per masked frame or per utterance, as our step's) of every step."""
        if name == "num_masked" and not self.trainer.is_ctc:
            return [u.normalizer for u in self.updates]
        if name == "loss":
            return [u.outputs.loss.item() / u.normalizer for u in self.updates]
        raise ValueError(f"no reference value {name!r} for this task")

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"cuda({self.torch.cuda.get_device_name()})"
        return f"cpu({os.cpu_count()}-cores,{platform.processor() or platform.machine()})"

    def memory(self, peak_rss: int) -> tuple[dict[str, int], str]:
        if self.device.type == "cuda":
            return {"device_peak": int(self.torch.cuda.max_memory_allocated())}, "torch.cuda.max_memory_allocated"
        return {"peak_rss": peak_rss}, "process peak RSS during its timed steps"


def time_interleaved(
    steps: dict[str, Callable[[], None]],
    count: int,
    settle_seconds: float = 0.5,
    each_round: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, list[int]]]:
    """Runs the steps round-robin `count` times; returns each one's wall times, peak RSS and minor page faults.

    Alternating the frameworks step by step exposes both to the same load on a shared machine,
    so their ratio is fair even when the machine's speed drifts during the run. An untimed
    pause of `settle_seconds` before each step lets the other framework's worker threads, which
    spin for a while after their work, go idle: on a few cores they otherwise slow the other
    framework's small steps many times over.
    `each_round` runs (untimed) after every round, e.g. to sample the matmul peak under the same load.
    """
    rss = PeakResidentMemory()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0)
    faults: dict[str, list[int]] = {name: [] for name in steps}
    for _ in range(count):
        for name, step in steps.items():
            time.sleep(settle_seconds)
            rss.reset()
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
            peaks[name] = max(peaks[name], rss.peak_bytes())
        if each_round is not None:
            each_round()
    return seconds, peaks, faults


@dataclasses.dataclass
class BenchmarkResult:
    """`run_benchmark`'s measurements: ours, the reference's (or None), and the inputs check.

    Attributes:
      masks_agree: pretraining: whether both sides masked as many frames at every step.
      first_losses: fine-tuning: the first step's loss per utterance, {framework: loss}.
    """

    header: str
    ours: StepTimings
    reference: StepTimings | None = None
    masks_agree: bool | None = None
    first_losses: dict[str, float] | None = None

    @property
    def ratio(self) -> float | None:
        """Our throughput over the reference's (audio-seconds per second, same run)."""
        if self.reference is None:
            return None
        return self.ours.audio_seconds_per_second / self.reference.audio_seconds_per_second

    def lines(self) -> list[str]:
        """The printed report; the last line is `ratio=X` when the reference ran."""
        lines = [self.header, self.ours.line()]
        if self.reference is not None:
            lines.append(self.reference.line())
            if self.masks_agree is not None:
                lines.append(f"same masks and distractors on both sides: {self.masks_agree}")
            if self.first_losses is not None:
                ours, theirs = self.first_losses["w2v_jax"], self.first_losses["pytorch"]
                lines.append(
                    f"first step's loss per utterance: w2v_jax={ours:.7g} pytorch={theirs:.7g} "
                    f"relative_gap={abs(ours - theirs) / abs(theirs):.2e} (same batch, weights and masks; "
                    "dropout, if any, differs)"
                )
            lines.append(f"ratio={self.ratio:.3f}")
        return lines


def run_benchmark(
    config: ml_collections.ConfigDict,
    settings: BenchmarkSettings,
    *,
    vs_pytorch: bool = False,
    device: jax.Device | None = None,
) -> BenchmarkResult:
    """Times our train step and, with `vs_pytorch`, the reference's (see the module docstring).

    Both warm up first; then their timed steps alternate (`time_interleaved`).

    Args:
      config: a pretrain or fine-tune config (`w2v_jax/configs/{pretrain,finetune}.py`; see
        `benchmark_task`): the task's model, objective, optimizer and schedule are used.
      settings: batch, steps, precision, remat.
      vs_pytorch: also time transformers' model with torch's AdamW.
      device: where our step runs (default: the first device).

    Returns:
      the measurements; `lines()` is the report.
    """
    task = benchmark_task(config)
    device = device or jax.devices()[0]
    dtype = PRECISIONS[settings.precision] or jnp.float32
    # The best matmul rate seen during the run: sampled before and after every round of steps,
    # so the load the steps saw is in it too (one sample alone gave an MFU above 1).
    peak = {device.platform: compute.matmul_peak_flops(device, dtype)}

    def sample_peaks() -> None:
        for name in peak:
            target = device if name == device.platform else jax.devices(name)[0]
            peak[name] = max(peak[name], compute.matmul_peak_flops(target, dtype, repeats=5))

    ours = JaxRunner(task, settings, device)
    steps = {"w2v_jax": ours.step}
    reference = None
    if vs_pytorch:
        reference = TorchRunner(task, settings, ours.initial_params)
        steps["pytorch"] = reference.step
        reference_platform = "gpu" if reference.device.type == "cuda" else "cpu"
        if reference_platform not in peak:
            peak[reference_platform] = compute.matmul_peak_flops(jax.devices(reference_platform)[0], dtype)
    del ours.initial_params
    for _ in range(settings.warmup):
        for step in steps.values():
            time.sleep(0.5)
            step()
    seconds, peak_rss, faults = time_interleaved(steps, settings.steps, each_round=sample_peaks)

    audio_seconds = settings.batch_size * settings.seconds
    memory, source = ours.memory(peak_rss["w2v_jax"])
    header = _report_header(config, task, settings, device, dtype, peak[device.platform], ours.batch.get("labels"))
    result = BenchmarkResult(
        header,
        StepTimings(
            framework="w2v_jax",
            device=_describe(device),
            step_seconds=seconds["w2v_jax"],
            audio_seconds_per_step=audio_seconds,
            flops_per_step=ours.compiled.flops,
            peak_flops_per_second=peak[device.platform],
            compile_seconds=ours.compiled.compile_seconds,
            memory=memory,
            memory_source=source,
            minor_faults=faults["w2v_jax"],
        ),
    )
    if reference is not None:
        memory, source = reference.memory(peak_rss["pytorch"])
        result.reference = StepTimings(
            framework="pytorch",
            device=reference.describe(),
            step_seconds=seconds["pytorch"],
            audio_seconds_per_step=audio_seconds,
            # The same model: XLA's count of our step is the reference's model FLOPs too.
            flops_per_step=ours.compiled.flops,
            peak_flops_per_second=peak["gpu" if reference.device.type == "cuda" else "cpu"],
            compile_seconds=None,
            memory=memory,
            memory_source=source,
            minor_faults=faults["pytorch"],
        )
        if reference.trainer.is_ctc:
            result.first_losses = {"w2v_jax": ours.values("loss")[0], "pytorch": reference.values("loss")[0]}
        else:
            result.masks_agree = reference.values("num_masked") == ours.values("num_masked")
    return result


def _report_header(
    config: ml_collections.ConfigDict,
    task: BenchmarkTask,
    settings: BenchmarkSettings,
    device: jax.Device,
    dtype: jnp.dtype,
    peak_flops: float,
    labels: np.ndarray | None,
) -> str:
    """The report's first line: what ran, where, and the matmul peak the MFU is measured against."""
    model_config = task.model_config
    return (
        f"config={config.get('variant', '?')} task={task.name} layers={model_config.num_hidden_layers} "
        f"hidden={model_config.hidden_size} "
        f"conv_channels={model_config.conv_dim[-1]} batch={settings.batch_size} seconds={settings.seconds} "
        + ("" if labels is None else f"labels={labels.shape[1]} vocab={model_config.vocab_size} ")
        + f"precision={settings.precision} remat={settings.remat} warmup={settings.warmup} steps={settings.steps} "
        f"layerdrop=0 jax={jax.__version__} host_malloc={host_memory.mode()} matmul_peak_flops_per_s={peak_flops:.4g} "
        f"(best {'1024' if device.platform == 'cpu' else '8192'}^2 {jnp.dtype(dtype).name} matmul of the run; "
        f"timed steps alternate between the frameworks)"
    )


def loss_gradient_temp_bytes(task: BenchmarkTask, settings: BenchmarkSettings, remat: bool) -> int:
    """XLA's temporary bytes of the compiled forward + backward pass alone (activation memory).

    The gradient of the task objective's training loss with respect to the parameters, as the
    train step takes it, without the optimizer update (whose temporaries don't depend on
    rematerialisation).
    """
    abstract = nnx.eval_shape(
        lambda: train_step.create_model(
            task.model_config, 0, model_class=task.model_class, dtype=PRECISIONS[settings.precision], remat=remat
        )
    )
    graphdef, params = nnx.split(abstract)
    objective = task.hparams.objective

    def loss(params: nnx.State, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        return objective.loss(nnx.merge(graphdef, params), batch, key, jnp.zeros((), jnp.int32))[0]

    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in make_batch(task, settings).items()}
    compiled = jax.jit(jax.grad(loss)).lower(params, batch, jax.random.key(0)).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis of the compiled gradient")
    return int(memory.temp_size_in_bytes)


def remat_memory(config: ml_collections.ConfigDict, settings: BenchmarkSettings) -> list[str]:
    """XLA's temporary bytes without and with remat, of the forward + backward pass and of the whole step.

    Compiles only (nothing runs), on the first device.

    Returns:
      two report lines, `forward_backward` (activation memory) and `train_step` (plus the
      optimizer update's temporaries), each `no_remat_mib=.. remat_mib=.. reduction=..x`.
    """
    task = benchmark_task(config)
    device = jax.devices()[0]
    temp: dict[str, dict[bool, int]] = {"forward_backward": {}, "train_step": {}}
    for remat in (False, True):
        temp["forward_backward"][remat] = loss_gradient_temp_bytes(task, settings, remat)
        compiled, _ = compile_train_step(task, dataclasses.replace(settings, remat=remat), device)
        temp["train_step"][remat] = int(compiled.memory.temp_size_in_bytes)
    return [
        f"{name}: xla_temp no_remat_mib={sizes[False] / _MIB:.1f} remat_mib={sizes[True] / _MIB:.1f} "
        f"reduction={sizes[False] / sizes[True]:.2f}x"
        for name, sizes in temp.items()
    ]
