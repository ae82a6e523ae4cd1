"""The PyTorch reference (transformers' `Wav2Vec2ForPreTraining`) trained the way we train.

`ReferenceTrainer` runs transformers' model with the optimisation of `w2v_jax.optim` and
`w2v_jax.train`, so that a loss curve of ours can be laid over the reference's and any gap
means a bug, not a different recipe:

- weights: our initial parameters, converted with `w2v_jax.convert.params_to_hf` (exact);
- loss scale: the reference's losses are sums over masked frames; the gradient is divided by the
  number of masked frames once (fairseq's sample size), as our train step does;
- optimizer: `torch.optim.AdamW` with our betas, eps and decoupled weight decay (applied to every
  parameter, also those whose gradient is zero this step, as optax does), after global-norm
  clipping written to match `optax.clip_by_global_norm`;
- schedules: the learning rate is our optax schedule evaluated at the step; the Gumbel
  temperature is `quantization.gumbel_temperature` (the same float32 value) set on the reference
  quantizer before each step;
- inputs: the caller supplies the masks and distractors of each step (transformers takes them as
  arguments) and, in training mode, the Gumbel noise (transformers draws it inside
  `torch.nn.functional.gumbel_softmax`; `supplied_gumbel_noise` swaps that function for one that
  uses the given noise, for the duration of one forward pass).

The straight-through sample is formed as `hard + (soft - soft)` on both sides, so its forward
value is exactly the one-hot. torch's `hard - soft.detach() + soft` (and our former
`hard + soft - soft`) round differently: the one-hot can come out 1 ulp off, two frames with the
same codewords then get q vectors that are not bitwise equal, and the "distractor equal to its
positive gets -inf" rule fires on different distractors in each framework (found by this
comparison: 5 vs 10 such distractors in one tiny batch, a loss gap of 1.4% that no tolerance
should hide).

What cannot be matched: dropout masks and LayerDrop draws (torch draws them from its own
generator), and fairseq's feature penalty and encoder gradient scale (transformers has neither).
`comparable_config` turns those off, so a train-mode comparison is deterministic on both sides and
the curves should agree to float32 rounding, amplified by training.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers
from flax import nnx

from w2v_jax import plotting, sharding
from w2v_jax import train_step as train_lib
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.context_network import named_key
from w2v_jax.contrastive_loss import contrastive_accuracy, contrastive_logits, gather_negatives, sample_negative_indices
from w2v_jax.convert import params_to_hf
from w2v_jax.data import default_manifest, make_train_iterator
from w2v_jax.masking import compute_mask_indices
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.quantization import gumbel_noise, gumbel_temperature

# The randomness the reference draws from its own generator: zero it for a comparison.
_STOCHASTIC_FIELDS = (
    "hidden_dropout",
    "activation_dropout",
    "attention_dropout",
    "feat_proj_dropout",
    "feat_quantizer_dropout",
    "layerdrop",
)


def comparable_config(config: Wav2Vec2Config) -> Wav2Vec2Config:
    """`config` with what the reference can't reproduce turned off.

    Dropouts and LayerDrop are zero (their random draws can't be shared with torch), the feature
    penalty is zero and the encoder gradient scale one (fairseq options transformers lacks).
    Everything else, the Gumbel sampling included, stays as configured.
    """
    return config.replace(
        **{name: 0.0 for name in _STOCHASTIC_FIELDS}, feature_penalty_weight=0.0, feature_grad_mult=1.0
    )


def check_comparable(config: Wav2Vec2Config) -> None:
    """ValueError naming each field that makes the reference compute something else than we do."""
    problems = [f"{name}={getattr(config, name)}" for name in _STOCHASTIC_FIELDS if getattr(config, name) != 0.0]
    if config.feature_penalty_weight != 0.0:
        problems.append(f"feature_penalty_weight={config.feature_penalty_weight} (transformers has no feature penalty)")
    if config.feature_grad_mult != 1.0:
        problems.append(f"feature_grad_mult={config.feature_grad_mult} (transformers has no gradient scale)")
    if problems:
        raise ValueError(
            "config can't be compared step by step with the PyTorch reference: "
            + ", ".join(problems)
            + "; use reference.comparable_config(config)"
        )


def hf_config(config: Wav2Vec2Config) -> transformers.Wav2Vec2Config:
    """transformers' config of the same model (eager attention: no fused-kernel reordering)."""
    hf = transformers.Wav2Vec2Config(**config.to_hf_dict())
    hf._attn_implementation = "eager"
    return hf


def build_reference_model(config: Wav2Vec2Config, params: nnx.State) -> transformers.Wav2Vec2ForPreTraining:
    """transformers' `Wav2Vec2ForPreTraining` holding our parameters, float32, in training mode.

    Args:
      config: the model config.
      params: `nnx.state(model, nnx.Param)` of our model (or the train state's params).

    Returns:
      the torch module (every parameter loaded: `load_state_dict(strict=True)`).
    """
    model = transformers.Wav2Vec2ForPreTraining(hf_config(config)).to(torch.float32)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in params_to_hf(params, config).items()}
    model.load_state_dict(state_dict, strict=True)
    return model.train()


def flat_negative_indices(indices: np.ndarray) -> np.ndarray:
    """Per-utterance distractor frames `[batch, time, K]` -> transformers' indices into `[batch * time]`."""
    indices = np.asarray(indices)
    if indices.ndim != 3:
        raise ValueError(f"negative indices must be [batch, time, K], got shape {indices.shape}")
    batch, time, _ = indices.shape
    return indices + np.arange(batch)[:, None, None] * time


@contextlib.contextmanager
def supplied_gumbel_noise(noise: np.ndarray) -> Iterator[None]:
    """Within the block, `torch.nn.functional.gumbel_softmax` uses `noise` instead of drawing it.

    The replacement computes what torch's does with hard=True: the one-hot of the argmax of
    softmax((logits + noise) / tau) in the forward pass (exactly, see the module docstring), the
    soft sample's gradient backward.

    Args:
      noise: `[batch, time, G, V]` standard Gumbel noise, e.g. the noise our quantizer draws
        (`quantization.gumbel_noise`); the reference flattens its logits to `[batch * time * G, V]`.
    """
    noise_t = torch.tensor(np.asarray(noise, np.float32))
    original = torch.nn.functional.gumbel_softmax

    def with_noise(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10, dim: int = -1):
        del eps  # deprecated in torch, unused there too
        if not hard or dim != -1:
            raise ValueError("supplied_gumbel_noise supports the reference's call: hard=True over the last axis")
        gumbels = noise_t.reshape(logits.shape)
        soft = torch.softmax((logits + gumbels) / tau, dim=-1)
        hard_sample = torch.nn.functional.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
        # soft - soft is exactly 0: the forward value is exactly the one-hot (see the module docstring).
        return hard_sample + (soft - soft.detach())

    torch.nn.functional.gumbel_softmax = with_noise
    try:
        yield
    finally:
        torch.nn.functional.gumbel_softmax = original


@dataclasses.dataclass(frozen=True)
class ReferenceHyperparams:
    """`optim.make_optimizer`'s and the train step's settings, for the reference.

    Attributes:
      learning_rate: the schedule `step -> lr` (`optim.learning_rate_schedule`'s optax schedule).
      b1, b2, eps, weight_decay: AdamW.
      max_grad_norm: global-norm clipping threshold (None or <= 0: none).
      gumbel_start, gumbel_end, gumbel_decay: the Gumbel temperature schedule.
    """

    learning_rate: Callable[[int], float]
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float | None = 10.0
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_decay: float = 0.999995


class ReferenceOptimizer:
    """`optim.make_optimizer` + the train step's schedule, in torch: clip, set the lr, AdamW.

    Weight decay reaches every parameter, also those without a gradient this step (as optax's
    AdamW decays every leaf), so a missing gradient counts as zero.
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter], hparams: ReferenceHyperparams):
        self.parameters = list(parameters)
        self.hparams = hparams
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=0.0, betas=(hparams.b1, hparams.b2), eps=hparams.eps, weight_decay=hparams.weight_decay
        )

    def step(self, step: int) -> tuple[float, float]:
        """Applies the update of `step` from the parameters' `.grad`; returns (grad norm, lr)."""
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # optax.clip_by_global_norm: g * max_norm / norm when norm >= max_norm.
        norm = torch.sqrt(sum(torch.sum(p.grad.double() ** 2) for p in self.parameters)).item()
        max_norm = self.hparams.max_grad_norm
        if max_norm is not None and max_norm > 0 and norm >= max_norm:
            for p in self.parameters:
                p.grad.div_(norm / max_norm)
        learning_rate = float(self.hparams.learning_rate(step))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return norm, learning_rate


class ReferenceTrainer:
    """Trains transformers' model with our recipe, one explicitly fed step at a time.

    Example:
      >>> trainer = ReferenceTrainer(config, params, hparams)
      >>> metrics = trainer.step(batch, mask, negatives, gumbel_noise)
    """

    def __init__(self, config: Wav2Vec2Config, params: nnx.State, hparams: ReferenceHyperparams):
        check_comparable(config)
        self.config = config
        self.hparams = hparams
        self.model = build_reference_model(config, params)
        self.optimizer = ReferenceOptimizer([p for p in self.model.parameters() if p.requires_grad], hparams)
        self.step_count = 0

    def temperature(self, step: int) -> float:
        """Our schedule's float32 value at `step` (what our jitted step computes)."""
        hp = self.hparams
        return float(gumbel_temperature(jnp.asarray(step, jnp.int32), hp.gumbel_start, hp.gumbel_end, hp.gumbel_decay))

    def step(
        self,
        batch: Mapping[str, np.ndarray],
        mask_time_indices: np.ndarray,
        negative_indices: np.ndarray,
        gumbel_noise: np.ndarray | None = None,
    ) -> dict[str, float]:
        """One update on `batch` with the given masks, distractors and Gumbel noise.

        Args:
          batch: {"input_values": float32 [batch, samples], "attention_mask": optional [batch, samples]}.
          mask_time_indices: `[batch, frames]` bool.
          negative_indices: `[batch, frames, K]` per-utterance frame indices
            (`contrastive_loss.sample_negative_indices`'s format).
          gumbel_noise: `[batch, frames, G, V]`; None lets torch draw its own (not comparable).

        Returns:
          metrics per masked frame, named as our train step's: loss, contrastive_loss,
          diversity_loss, accuracy, code_perplexity, num_masked, grad_norm, learning_rate,
          gumbel_temperature.
        """
        temperature = self.temperature(self.step_count)
        self.model.set_gumbel_temperature(temperature)
        inputs = {
            "input_values": torch.tensor(np.asarray(batch["input_values"], np.float32)),
            "mask_time_indices": torch.tensor(np.asarray(mask_time_indices, bool)),
            "sampled_negative_indices": torch.from_numpy(flat_negative_indices(negative_indices).astype(np.int64)),
        }
        if batch.get("attention_mask") is not None:
            inputs["attention_mask"] = torch.tensor(np.asarray(batch["attention_mask"], np.int64))
        noise = contextlib.nullcontext() if gumbel_noise is None else supplied_gumbel_noise(gumbel_noise)
        with noise:
            out = self.model(**inputs)
        num_masked = float(np.sum(mask_time_indices))
        (out.loss / num_masked).backward()
        grad_norm, learning_rate = self.optimizer.step(self.step_count)
        self.step_count += 1

        accuracy = _reference_accuracy(out, np.asarray(mask_time_indices, bool), negative_indices, self.config)
        return {
            "loss": out.loss.item() / num_masked,
            "contrastive_loss": out.contrastive_loss.item() / num_masked,
            "diversity_loss": out.diversity_loss.item() / num_masked,
            "accuracy": accuracy,
            "code_perplexity": out.codevector_perplexity.item(),
            "num_masked": num_masked,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "gumbel_temperature": temperature,
        }


def _reference_accuracy(out, mask: np.ndarray, negative_indices: np.ndarray, config: Wav2Vec2Config) -> float:
    """Contrastive accuracy of the reference's outputs (transformers doesn't return its logits).

    Our `contrastive_logits` / `contrastive_accuracy` applied to the reference's projected states.
    """
    context = out.projected_states.detach().numpy()
    quantized = out.projected_quantized_states.detach().numpy()
    negatives = gather_negatives(jnp.asarray(quantized), jnp.asarray(negative_indices, jnp.int32))
    logits = contrastive_logits(
        jnp.asarray(context), jnp.asarray(quantized), negatives, config.contrastive_logits_temperature
    )
    return float(contrastive_accuracy(logits, jnp.asarray(mask)))


# ---------------------------------------------------------------------------------------------
# Side-by-side training runs and their curves.

# The curves compared (per masked frame where it applies), in our train step's metric names.
CURVE_METRICS = ("loss", "contrastive_loss", "diversity_loss", "code_perplexity", "accuracy")
# Written to the CSV too, not part of the gap.
EXTRA_METRICS = ("grad_norm", "learning_rate", "gumbel_temperature", "num_masked", "seconds")
# "jax_ulp": our step again, from initial weights moved by one float32 ulp: the control run that
# measures how far float rounding alone carries two runs apart (training amplifies it, and the
# hard Gumbel argmax turns small differences into different codeword choices).
FRAMEWORKS = ("jax", "pytorch", "jax_ulp")


def comparison_settings(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
    """A copy of a pretrain config set up for a step-by-step comparison with the reference.

    The model gets `comparable_config`; the schedules span `num_steps` (so a short comparison
    sees warmup and decay); one micro-batch per update and float32, as the reference runs.
    """
    if num_steps < 1:
        raise ValueError(f"the comparison needs at least one step, got {num_steps}")
    config = ml_collections.ConfigDict(config.to_dict())
    model = comparable_config(Wav2Vec2Config(**config.model.to_dict()))
    config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    config.train.num_steps = num_steps
    config.train.warmup_steps = min(config.train.warmup_steps, num_steps)
    config.train.grad_accum_steps = 1
    config.train.precision = "float32"
    return config


def compare_training(
    config: ml_collections.ConfigDict, batches: Iterator[Mapping[str, np.ndarray]]
) -> list[dict[str, float]]:
    """Trains our model (our real train step) and the reference side by side, plus a control.

    Both start from our initial parameters and get, at every step, the same batch, the same span
    masks and distractors (sampled with our JAX samplers from a key of their own and passed
    explicitly to both) and the same Gumbel noise (the noise our model draws inside the step,
    re-derived from the step's key and fed to the reference). The control ("jax_ulp") is our step
    on the same inputs from initial weights one float32 ulp away (`jnp.nextafter`): the gap
    between it and "jax" is what float rounding alone does over the run, the yardstick for the
    gap to the reference.

    Args:
      config: a pretrain config prepared by `comparison_settings` (train.num_steps steps are run).
      batches: {"input_values", "attention_mask"} batches of `config.train.batch_size` rows.

    Returns:
      one record per step: `step` and `{metric}_{framework}` for CURVE_METRICS + EXTRA_METRICS and
      each of FRAMEWORKS.
    """
    t = config.train
    model_config = Wav2Vec2Config(**config.model.to_dict())
    check_comparable(model_config)
    # One device: the comparison is about the numbers, not the parallelism.
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer, hparams = train_lib.optimizer_and_hyperparams(t)
    schedule = hparams.learning_rate
    graphdef, state, state_shardings = train_lib.create_train_state(model_config, optimizer, seed=t.seed, mesh=mesh)
    step_fn = train_lib.TrainStep(graphdef, optimizer, hparams, mesh, state_shardings)
    _, control, _ = train_lib.create_train_state(model_config, optimizer, seed=t.seed, mesh=mesh)
    one_ulp_up = jax.jit(
        lambda p: jax.tree.map(lambda x: jnp.nextafter(x, jnp.inf), p), out_shardings=state_shardings.params
    )
    control = control.replace(params=one_ulp_up(control.params))
    reference = ReferenceTrainer(
        model_config,
        state.params,
        ReferenceHyperparams(
            learning_rate=schedule,
            b1=t.adam_b1,
            b2=t.adam_b2,
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            gumbel_start=t.max_gumbel_temperature,
            gumbel_end=t.min_gumbel_temperature,
            gumbel_decay=t.gumbel_temperature_decay,
        ),
    )
    shapes = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(model_config))
    key = jax.random.key(t.seed)  # the trainer's base key
    sampling_key = named_key(key, "compare_pytorch")
    codebook = (model_config.num_codevector_groups, model_config.num_codevectors_per_group)

    records = []
    for step in range(t.num_steps):
        batch = {k: np.asarray(v) for k, v in next(batches).items()}
        rows, samples = batch["input_values"].shape
        frames = shapes.num_frames(samples)
        frame_lengths = shapes.feature_extractor.compute_output_length(np.sum(batch["attention_mask"], axis=1))
        step_key = jax.random.fold_in(sampling_key, step)
        mask = compute_mask_indices(
            named_key(step_key, "mask"),
            (rows, frames),
            model_config.mask_time_prob,
            model_config.mask_time_length,
            model_config.mask_time_min_masks,
            jnp.asarray(frame_lengths, jnp.int32),
        )
        negatives = sample_negative_indices(named_key(step_key, "negatives"), mask, model_config.num_negatives)
        noise = gumbel_noise(named_key(train_lib.model_key(key, step, 0), "gumbel"), (rows, frames, *codebook))
        explicit = {"mask_time_indices": np.asarray(mask), "sampled_negative_indices": np.asarray(negatives)}

        metrics = {}
        start = time.perf_counter()
        state, out = step_fn(state, {**batch, **explicit}, key)
        metrics["jax"] = {k: float(v) for k, v in jax.device_get(out).items()}
        metrics["jax"]["seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics["pytorch"] = reference.step(
            batch, explicit["mask_time_indices"], explicit["sampled_negative_indices"], np.asarray(noise)
        )
        metrics["pytorch"]["seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        control, out = step_fn(control, {**batch, **explicit}, key)
        metrics["jax_ulp"] = {k: float(v) for k, v in jax.device_get(out).items()}
        metrics["jax_ulp"]["seconds"] = time.perf_counter() - start

        record: dict[str, float] = {"step": step + 1}
        for framework in FRAMEWORKS:
            record.update({f"{name}_{framework}": metrics[framework][name] for name in CURVE_METRICS + EXTRA_METRICS})
        records.append(record)
    return records


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` points (fewer at the start)."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def relative_gaps(
    records: Sequence[Mapping[str, float]],
    window: int = 10,
    metrics: Sequence[str] = CURVE_METRICS,
    between: tuple[str, str] = ("jax", "pytorch"),
) -> dict[str, tuple[float, int]]:
    """The largest relative gap between two frameworks' smoothed curves, for each metric.

    The gap at a step is |a - b| / max(|a|, |b|, 1e-6) of the two smoothed values.

    Returns:
      {metric: (largest gap, step where it is)}.
    """
    if not records:
        raise ValueError("no records to compare")
    steps = [int(r["step"]) for r in records]
    out = {}
    for name in metrics:
        a = smooth([r[f"{name}_{between[0]}"] for r in records], window)
        b = smooth([r[f"{name}_{between[1]}"] for r in records], window)
        gap = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-6)
        worst = int(np.argmax(gap))
        out[name] = (float(gap[worst]), steps[worst])
    return out


def write_curves_csv(records: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """One row per step: `step`, then `{metric}_{framework}` columns."""
    if not records:
        raise ValueError("no records to write")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def read_curve_file(path: str | os.PathLike, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` from an external run's CSV or JSONL file.

    CSV: a header with a `step` column and a `metric` column (e.g. `step,loss`). JSONL: one JSON
    object per line with `step` and `metric` keys (our `metrics.jsonl`, or any logger's).
    Rows without the metric (or with an empty / null value) are skipped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"curve file {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"curve file {path} must be .csv, .tsv or .jsonl (with step and {metric} fields)")
    if not rows or "step" not in rows[0] or not any(metric in r for r in rows):
        raise ValueError(f"curve file {path} needs 'step' and {metric!r} fields; first row: {rows[:1]}")
    points = [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps), np.asarray(values)


def run_comparison(
    config: ml_collections.ConfigDict,
    num_steps: int,
    workdir: str | os.PathLike,
    *,
    external: Sequence[str | os.PathLike] = (),
    window: int = 10,
    batches: Iterator[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, object]:
    """`compare_training` on the config's data, then the outputs in `workdir`.

    Writes `curves.csv`, `curves.png` (both frameworks and any external curve files overlaid)
    and `summary.json`; returns the summary, whose "line" is the one-line verdict.

    Args:
      config: a pretrain config (`experiments/configs/pretrain.py`); made comparable here.
      num_steps: updates to run on each side.
      workdir: output folder (created).
      external: CSV / JSONL curve files of other PyTorch runs (step and loss), overlaid on the loss.
      window: moving-average window of the smoothed curves the gap is measured on.
      batches: the batches to train on; default the config's data pipeline (train manifest).
    """
    config = comparison_settings(config, num_steps)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    external_curves = {pathlib.Path(p).name: read_curve_file(p) for p in external}
    if batches is None:
        batches = make_train_iterator(
            config.data.train_manifest or default_manifest("train"),
            batch_size=config.train.batch_size,
            seed=config.train.seed,
            max_sample_size=config.data.max_sample_size,
            min_sample_size=config.data.min_sample_size,
            pad=config.data.pad,
            normalize=config.data.normalize,
            num_workers=config.data.num_workers,
        )
    records = compare_training(config, batches)
    write_curves_csv(records, workdir / "curves.csv")
    gaps = relative_gaps(records, window)
    control_gaps = relative_gaps(records, window, between=("jax", "jax_ulp"))
    worst = max(gaps, key=lambda name: gaps[name][0])
    worst_control = max(control_gaps, key=lambda name: control_gaps[name][0])
    seconds = {fw: float(np.median([r[f"seconds_{fw}"] for r in records[1:] or records])) for fw in FRAMEWORKS}
    line = (
        f"{num_steps} steps: largest relative gap between the smoothed (window {window}) curves of JAX and "
        f"PyTorch {gaps[worst][0]:.2e} ({worst} at step {gaps[worst][1]}); "
        + ", ".join(f"{name} {gap:.1e}" for name, (gap, _) in gaps.items())
        + f". Float-rounding yardstick, JAX vs JAX from 1-ulp-perturbed weights: {control_gaps[worst_control][0]:.2e} "
        f"({worst_control} at step {control_gaps[worst_control][1]}); "
        + ", ".join(f"{name} {gap:.1e}" for name, (gap, _) in control_gaps.items())
        + f". Median step time JAX {seconds['jax']:.3f} s, PyTorch {seconds['pytorch']:.3f} s"
    )
    plotting.plot_curve_overlay(records, workdir / "curves.png", CURVE_METRICS, FRAMEWORKS, external_curves)
    summary = {
        "line": line,
        "num_steps": num_steps,
        "window": window,
        "gaps": {name: {"gap": gap, "step": step} for name, (gap, step) in gaps.items()},
        "control_gaps": {name: {"gap": gap, "step": step} for name, (gap, step) in control_gaps.items()},
        "median_step_seconds": seconds,
        "model": config.model.to_dict(),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    return summary
