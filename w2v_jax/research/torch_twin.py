"""The PyTorch twin: transformers' `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC` trained the way we train.

`ReferenceTrainer` runs transformers' model with the optimisation of `training.optim` and
`training.train_step` (the same `OptimizerSettings` and `StepHyperparams`), so that a loss curve of
ours can be laid over the reference's and any gap means a bug, not a different recipe. What the
step optimises follows our step's objective: pretraining (`pretraining.objective.PretrainingObjective`)
or CTC fine-tuning (`asr.objective.CTCObjective`: `Wav2Vec2ForCTC`).

- weights: our initial parameters, converted with `checkpoints.hf.params_to_hf` (exact);
- loss scale: the reference's losses are sums (pretraining: over masked frames; CTC: transformers'
  "sum" reduction, over utterances); the gradient is divided once by the number of masked frames
  (fairseq's sample size) or of utterances (fairseq's `sentence_avg`), as our train step does;
- frozen parameters: a feature encoder with `feature_grad_mult = 0` is frozen with transformers'
  `freeze_feature_encoder` (no gradient, as our zero-scaled one); CTC's
  `freeze_finetune_updates` zeroes the gradient of every `wav2vec2.*` parameter for the first
  updates, as `CTCObjective.frozen_gradients` does;
- optimizer: `torch.optim.AdamW` with our betas, eps and decoupled weight decay (applied to every
  parameter, also those whose gradient is zero this step, as optax does), after global-norm
  clipping written to match `optax.clip_by_global_norm`;
- schedules: the learning rate is our optax schedule evaluated at the step; the Gumbel
  temperature is `quantization.gumbel_temperature` (the same float32 value) set on the reference
  quantizer before each step;
- inputs: the caller supplies the masks and distractors of each step (transformers takes them as
  arguments) and, in training mode, the Gumbel noise (transformers draws it inside
  `torch.nn.functional.gumbel_softmax`; `supplied_gumbel_noise` swaps that function for one that
  uses the given noise, for the duration of one forward pass). CTC fine-tuning's time mask goes in
  as `mask_time_indices` (transformers' `Wav2Vec2ForCTC` passes it on to its encoder) and its
  channel mask through `supplied_feature_mask` (transformers draws it in `_compute_mask_indices`).

The straight-through sample is formed as `hard + (soft - soft)` on both sides, so its forward
value is exactly the one-hot. torch's `hard - soft.detach() + soft` (or `hard + soft - soft`)
rounds differently: the one-hot can come out 1 ulp off, two frames with the same codewords then get
q vectors that are not bitwise equal, and the "distractor equal to its positive gets -inf" rule
fires on different distractors in each framework.

What cannot be matched: dropout masks and LayerDrop draws (torch draws them from its own
generator), and fairseq's feature penalty and encoder gradient scale other than 0 or 1
(transformers has neither).
`comparable_config` turns those off, so a train-mode comparison is deterministic on both sides and
the curves should agree to float32 rounding, amplified by training.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.asr.objective import CTCObjective
from w2v_jax.checkpoints.hf import params_to_hf
from w2v_jax.config import DROPOUT_FIELDS, Wav2Vec2Config
from w2v_jax.contrastive_loss import contrastive_accuracy, contrastive_logits, gather_negatives
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.reference import LazyReference
from w2v_jax.training.optim import OptimizerSettings
from w2v_jax.training.train_step import StepHyperparams

torch = LazyReference("torch", "the PyTorch twin (w2v_jax.research.torch_twin)")
transformers = LazyReference("transformers", "the PyTorch twin (w2v_jax.research.torch_twin)")
# torch's types in annotations: the lazy modules above hold none for the type checker.
Tensor = Any

# The randomness the reference draws from its own generator: zero it for a comparison.
_STOCHASTIC_FIELDS = (*DROPOUT_FIELDS, "layerdrop")
# transformers' counterpart of each of our models.
_REFERENCE_CLASSES = {Wav2Vec2ForPreTraining: "Wav2Vec2ForPreTraining", Wav2Vec2ForCTC: "Wav2Vec2ForCTC"}


def comparable_config(config: Wav2Vec2Config) -> Wav2Vec2Config:
    """`config` with what the reference can't reproduce turned off.

    Dropouts and LayerDrop are zero (their random draws can't be shared with torch), the feature
    penalty is zero and the encoder gradient scale one (fairseq options transformers lacks), unless
    it is zero: a frozen feature encoder, which transformers has (`freeze_feature_encoder`).
    Everything else, the Gumbel sampling and fine-tuning's masks included, stays as configured.
    """
    return config.replace(
        **{name: 0.0 for name in _STOCHASTIC_FIELDS},
        feature_penalty_weight=0.0,
        feature_grad_mult=0.0 if config.feature_grad_mult == 0.0 else 1.0,
    )


def check_comparable(config: Wav2Vec2Config) -> None:
    """ValueError naming each field that makes the reference compute something else than we do."""
    problems = [f"{name}={getattr(config, name)}" for name in _STOCHASTIC_FIELDS if getattr(config, name) != 0.0]
    if config.feature_penalty_weight != 0.0:
        problems.append(f"feature_penalty_weight={config.feature_penalty_weight} (transformers has no feature penalty)")
    if config.feature_grad_mult not in (0.0, 1.0):
        problems.append(
            f"feature_grad_mult={config.feature_grad_mult} (transformers has no gradient scale; 0 freezes the encoder)"
        )
    if problems:
        raise ValueError(
            "config can't be compared step by step with the PyTorch reference: "
            + ", ".join(problems)
            + "; use torch_twin.comparable_config(config)"
        )


def hf_config(config: Wav2Vec2Config) -> Any:
    """transformers' config of the same model (eager attention: no fused-kernel reordering)."""
    hf = transformers.Wav2Vec2Config(**config.to_hf_dict())
    hf._attn_implementation = "eager"
    return hf


def build_reference_model(
    config: Wav2Vec2Config, params: nnx.State, model_class: type[nnx.Module] = Wav2Vec2ForPreTraining
) -> Any:
    """transformers' counterpart of our `model_class` holding our parameters, float32, in training mode.

    Args:
      config: the model config; `feature_grad_mult = 0` freezes the feature encoder
        (`freeze_feature_encoder`: no gradient, as our zero-scaled one).
      params: `nnx.state(model, nnx.Param)` of our model (or the train state's params).
      model_class: `Wav2Vec2ForPreTraining` or `Wav2Vec2ForCTC`.

    Returns:
      the torch module (every parameter loaded: `load_state_dict(strict=True)`).
    """
    if model_class not in _REFERENCE_CLASSES:
        names = sorted(c.__name__ for c in _REFERENCE_CLASSES)
        raise ValueError(f"no PyTorch reference for {model_class.__name__}; one of {names}")
    model = getattr(transformers, _REFERENCE_CLASSES[model_class])(hf_config(config)).to(torch.float32)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in params_to_hf(params, config).items()}
    model.load_state_dict(state_dict, strict=True)
    if config.feature_grad_mult == 0.0:
        model.freeze_feature_encoder()
    return model.train()


def flat_negative_indices(indices: np.ndarray) -> np.ndarray:
    """Per-utterance distractor frames `[batch, time, K]` -> transformers' indices into `[batch * time]`."""
    indices = np.asarray(indices)
    if indices.ndim != 3:
        raise ValueError(f"negative indices must be [batch, time, K], got shape {indices.shape}")
    batch, time, _ = indices.shape
    return indices + np.arange(batch)[:, None, None] * time


@contextlib.contextmanager
def supplied_feature_mask(mask: np.ndarray) -> Iterator[None]:
    """Within the block, transformers' Wav2Vec2 models mask the channels of `mask` instead of drawing them.

    transformers draws the channel mask of `_mask_hidden_states` with `_compute_mask_indices`; the
    replacement returns `mask` for that call. A time mask must be passed as `mask_time_indices`
    (a call for another shape is an error, not a silent draw).

    Args:
      mask: `[batch, hidden]` bool, e.g. the mask our model draws (`training_draws.sample_training_masks`).
    """
    mask = np.asarray(mask, bool)
    modeling = transformers.models.wav2vec2.modeling_wav2vec2
    original = modeling._compute_mask_indices

    def supplied(shape, *args, **kwargs):
        del args, kwargs
        if tuple(shape) != mask.shape:
            raise ValueError(
                f"supplied_feature_mask holds a {mask.shape} channel mask, transformers asked for {tuple(shape)}"
            )
        return mask

    modeling._compute_mask_indices = supplied
    try:
        yield
    finally:
        modeling._compute_mask_indices = original


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

    def with_noise(logits: Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10, dim: int = -1):
        del eps  # deprecated in torch, unused there too
        if not hard or dim != -1:
            raise ValueError("supplied_gumbel_noise supports the reference's call: hard=True over the last axis")
        gumbels = noise_t.to(logits.device).reshape(logits.shape)
        soft = torch.softmax((logits + gumbels) / tau, dim=-1)
        hard_sample = torch.nn.functional.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
        # soft - soft is exactly 0: the forward value is exactly the one-hot (see the module docstring).
        return hard_sample + (soft - soft.detach())

    torch.nn.functional.gumbel_softmax = with_noise
    try:
        yield
    finally:
        torch.nn.functional.gumbel_softmax = original


class ReferenceOptimizer:
    """`optim.make_optimizer` + the train step's schedule, in torch: clip, set the lr, AdamW.

    Weight decay reaches every parameter, also those without a gradient this step (as optax's
    AdamW decays every leaf), so a missing gradient counts as zero.
    """

    def __init__(self, parameters: Sequence[Tensor], settings: OptimizerSettings, learning_rate: Any):
        """`learning_rate`: the schedule `step -> lr` (`StepHyperparams.learning_rate`)."""
        self.parameters = list(parameters)
        self.settings = settings
        self.learning_rate = learning_rate
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=0.0,
            betas=(settings.b1, settings.b2),
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )

    def step(self, step: int) -> tuple[float, float]:
        """Applies the update of `step` from the parameters' `.grad`; returns (grad norm, lr)."""
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # optax.clip_by_global_norm: g * max_norm / norm when norm >= max_norm.
        norm = torch.sqrt(sum(torch.sum(p.grad.double() ** 2) for p in self.parameters)).item()
        max_norm = self.settings.max_grad_norm
        if max_norm is not None and max_norm > 0 and norm >= max_norm:
            for p in self.parameters:
                p.grad.div_(norm / max_norm)
        learning_rate = float(self.learning_rate(step))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return norm, learning_rate


@dataclasses.dataclass
class ReferenceUpdate:
    """What one `ReferenceTrainer` update did: the model's outputs and the optimizer's numbers.

    Attributes:
      outputs: transformers' model output (`Wav2Vec2ForPreTrainingOutput` or `CausalLMOutput`).
      normalizer: what the summed loss's gradient was divided by: the masked frames (pretraining)
        or the utterances (CTC), our objective's `normalizer`.
      grad_norm, learning_rate: the optimizer's.
      gumbel_temperature: pretraining's temperature (None for CTC).
    """

    outputs: Any
    normalizer: float
    grad_norm: float
    learning_rate: float
    gumbel_temperature: float | None = None


class ReferenceTrainer:
    """Trains transformers' model with our recipe, one explicitly fed step at a time.

    The one PyTorch training loop of the project: the curve comparison (`research.compare`) and
    the benchmark (`research.benchmark`) both run it. `update` / `step` feed a pretraining step,
    `update_ctc` / `step_ctc` a CTC fine-tuning step (when `hparams.objective` is a
    `asr.objective.CTCObjective`); both end in the same backward pass and optimizer update.

    Example:
      >>> hparams = StepHyperparams(schedule, PretrainingObjective())
      >>> trainer = ReferenceTrainer(config, params, OptimizerSettings(), hparams)
      >>> metrics = trainer.step(batch, mask, negatives, gumbel_noise)
      >>> ctc = ReferenceTrainer(config, params, settings, StepHyperparams(schedule, objective=CTCObjective()))
      >>> metrics = ctc.step_ctc(batch, time_mask, feature_mask)      # batch with "labels"
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        params: nnx.State,
        optimizer: OptimizerSettings,
        hparams: StepHyperparams,
        *,
        device: Any = "cpu",
        attention: str = "eager",
        autocast_dtype: Any = None,
    ):
        """Args:
        config: the model config (`check_comparable` it for a step-by-step comparison).
        params: our initial parameters (`nnx.state(model, nnx.Param)` or the train state's) of
          the objective's model: `Wav2Vec2ForCTC` for a `CTCObjective`, else `Wav2Vec2ForPreTraining`.
        optimizer, hparams: our recipe (`OptimizerSettings.from_train_config`,
          `pretraining.task.pretraining_hyperparams` or a task's `optimizer_and_hyperparams`); gradient
          accumulation is not reproduced.
        device: where the model runs.
        attention: transformers' attention implementation ("eager": no fused-kernel
          reordering, for comparisons; "sdpa": PyTorch's fused attention, for timing).
        autocast_dtype: run the forward pass under `torch.autocast` in this dtype (None: float32).
        """
        self.config = config
        self.hparams = hparams
        self.objective: Any = hparams.objective  # a PretrainingObjective or a CTCObjective (`is_ctc`)
        self.is_ctc = isinstance(self.objective, CTCObjective)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        model_class = Wav2Vec2ForCTC if self.is_ctc else Wav2Vec2ForPreTraining
        self.model = build_reference_model(config, params, model_class).to(self.device)
        self.model.set_attn_implementation(attention)
        if self.is_ctc:
            # Our objective sums the utterances' losses whatever the model's own reduction says.
            self.model.config.ctc_loss_reduction = "sum"
        # Every parameter, frozen ones too: optax decays every leaf, a missing gradient is a zero one.
        self.optimizer = ReferenceOptimizer(list(self.model.parameters()), optimizer, hparams.learning_rate)
        self.step_count = 0

    def temperature(self, step: int) -> float:
        """Our schedule's float32 value at `step` (what our jitted step computes)."""
        return float(self.objective.temperature(jnp.asarray(step, jnp.int32)))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _optimize(self, summed_loss: Tensor, normalizer: float) -> tuple[float, float]:
        """Backward pass of `summed_loss / normalizer`, frozen gradients zeroed, the optimizer's
        update of this step; returns (grad norm, learning rate)."""
        (summed_loss / normalizer).backward()
        if self.is_ctc and self.step_count < self.objective.freeze_finetune_updates:
            for name, parameter in self.model.named_parameters():
                if name.startswith("wav2vec2.") and parameter.grad is not None:
                    parameter.grad.zero_()
        grad_norm, learning_rate = self.optimizer.step(self.step_count)
        self.step_count += 1
        return grad_norm, learning_rate

    def update(
        self,
        input_values: Tensor,
        mask_time_indices: Tensor,
        flat_negatives: Tensor,
        attention_mask: Tensor | None = None,
        gumbel_noise: np.ndarray | None = None,
    ) -> ReferenceUpdate:
        """One pretraining update from torch tensors already in transformers' formats (no host-side metrics).

        Args:
          input_values: float32 `[batch, samples]`.
          mask_time_indices: bool `[batch, frames]`.
          flat_negatives: int64 `[batch, frames, K]` indices into `[batch * frames]`
            (`flat_negative_indices`).
          attention_mask: optional `[batch, samples]`.
          gumbel_noise: `[batch, frames, G, V]`; None lets torch draw its own (not comparable).
        """
        if self.is_ctc:
            raise ValueError("this ReferenceTrainer fine-tunes with CTC (its objective): call update_ctc")
        temperature = self.temperature(self.step_count)
        self.model.set_gumbel_temperature(temperature)
        inputs = {
            "input_values": input_values.to(self.device),
            "mask_time_indices": mask_time_indices.to(self.device),
            "sampled_negative_indices": flat_negatives.to(self.device),
        }
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(self.device)
        noise = contextlib.nullcontext() if gumbel_noise is None else supplied_gumbel_noise(gumbel_noise)
        with noise, self._autocast():
            out = self.model(**inputs)
        num_masked = float(mask_time_indices.sum())
        grad_norm, learning_rate = self._optimize(out.loss, num_masked)
        return ReferenceUpdate(out, num_masked, grad_norm, learning_rate, temperature)

    def update_ctc(
        self,
        input_values: Tensor,
        labels: Tensor,
        attention_mask: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        feature_mask: np.ndarray | None = None,
    ) -> ReferenceUpdate:
        """One CTC fine-tuning update from torch tensors (no host-side metrics).

        Args:
          input_values: float32 `[batch, samples]`.
          labels: int64 `[batch, labels]` padded with -100.
          attention_mask: optional `[batch, samples]`, 1 on real samples. Given to the model when
            our objective gives it (`CTCObjective.use_attention_mask`: layer-norm models); otherwise
            the batch must be unpadded, since transformers then counts every frame in the loss
            where ours counts the real ones.
          mask_time_indices: bool `[batch, frames]`, the time mask; None lets transformers draw its
            own when `mask_time_prob > 0` (not comparable).
          feature_mask: bool `[batch, hidden]`, the channel mask; None lets transformers draw its
            own when `mask_feature_prob > 0` (not comparable).
        """
        if not self.is_ctc:
            raise ValueError("this ReferenceTrainer pretrains (its objective is not a CTCObjective): call update")
        inputs = {"input_values": input_values.to(self.device), "labels": labels.to(self.device)}
        if attention_mask is not None:
            if self.objective.use_attention_mask:
                inputs["attention_mask"] = attention_mask.to(self.device)
            elif not bool(attention_mask.all()):
                raise ValueError(
                    "a padded batch without the attention mask (CTCObjective.use_attention_mask=False, group-norm "
                    "models) can't be fed to transformers' Wav2Vec2ForCTC: its loss would count the padded frames"
                )
        if mask_time_indices is not None:
            inputs["mask_time_indices"] = mask_time_indices.to(self.device)
        channels = contextlib.nullcontext() if feature_mask is None else supplied_feature_mask(feature_mask)
        with channels, self._autocast():
            out = self.model(**inputs)
        if attention_mask is None:
            num_utterances = float(input_values.shape[0])
        else:
            num_utterances = float((attention_mask > 0).any(dim=-1).sum())
        grad_norm, learning_rate = self._optimize(out.loss, num_utterances)
        return ReferenceUpdate(out, num_utterances, grad_norm, learning_rate)

    def step(
        self,
        batch: Mapping[str, np.ndarray],
        mask_time_indices: np.ndarray,
        negative_indices: np.ndarray,
        gumbel_noise: np.ndarray | None = None,
    ) -> dict[str, float]:
        """One pretraining update on `batch` with the given masks, distractors and Gumbel noise.

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
        attention_mask = batch.get("attention_mask")
        update = self.update(
            torch.tensor(np.asarray(batch["input_values"], np.float32)),
            torch.tensor(np.asarray(mask_time_indices, bool)),
            torch.from_numpy(flat_negative_indices(negative_indices).astype(np.int64)),
            None if attention_mask is None else torch.tensor(np.asarray(attention_mask, np.int64)),
            gumbel_noise,
        )
        out, num_masked = update.outputs, update.normalizer
        accuracy = _reference_accuracy(out, np.asarray(mask_time_indices, bool), negative_indices, self.config)
        return {
            "loss": out.loss.item() / num_masked,
            "contrastive_loss": out.contrastive_loss.item() / num_masked,
            "diversity_loss": out.diversity_loss.item() / num_masked,
            "accuracy": accuracy,
            "code_perplexity": out.codevector_perplexity.item(),
            "num_masked": num_masked,
            "grad_norm": update.grad_norm,
            "learning_rate": update.learning_rate,
            "gumbel_temperature": update.gumbel_temperature,
        }

    def step_ctc(
        self,
        batch: Mapping[str, np.ndarray],
        mask_time_indices: np.ndarray | None = None,
        feature_mask: np.ndarray | None = None,
    ) -> dict[str, float]:
        """One CTC fine-tuning update on `batch` with the given masks (`training_draws.sample_training_masks`).

        Args:
          batch: {"input_values": float32 [batch, samples], "attention_mask": int [batch, samples],
            "labels": int [batch, labels] padded with -100}, a fine-tuning batch.
          mask_time_indices: `[batch, frames]` bool or None (as `update_ctc`'s).
          feature_mask: `[batch, hidden]` bool or None (as `update_ctc`'s).

        Returns:
          the metrics of our CTC objective (`CTCObjective.metrics`): loss (per utterance),
          loss_per_token, num_utterances, num_label_tokens, plus grad_norm and learning_rate.
        """
        attention_mask = batch.get("attention_mask")
        labels = np.asarray(batch["labels"], np.int64)
        update = self.update_ctc(
            torch.tensor(np.asarray(batch["input_values"], np.float32)),
            torch.from_numpy(labels),
            None if attention_mask is None else torch.tensor(np.asarray(attention_mask, np.int64)),
            None if mask_time_indices is None else torch.tensor(np.asarray(mask_time_indices, bool)),
            feature_mask,
        )
        loss = update.outputs.loss.item()
        num_label_tokens = float(np.sum((labels >= 0) & (labels != self.config.pad_token_id)))
        return {
            "loss": loss / update.normalizer,
            "loss_per_token": loss / max(num_label_tokens, 1.0),
            "num_utterances": update.normalizer,
            "num_label_tokens": num_label_tokens,
            "grad_norm": update.grad_norm,
            "learning_rate": update.learning_rate,
        }


def _reference_accuracy(out, mask: np.ndarray, negative_indices: np.ndarray, config: Wav2Vec2Config) -> float:
    """Contrastive accuracy of the reference's outputs (transformers doesn't return its logits).

    Our `contrastive_logits` / `contrastive_accuracy` applied to the reference's projected states.
    """
    context = out.projected_states.detach().float().cpu().numpy()
    quantized = out.projected_quantized_states.detach().float().cpu().numpy()
    negatives = gather_negatives(jnp.asarray(quantized), jnp.asarray(negative_indices, jnp.int32))
    logits = contrastive_logits(
        jnp.asarray(context), jnp.asarray(quantized), negatives, config.contrastive_logits_temperature
    )
    return float(contrastive_accuracy(logits, jnp.asarray(mask)))
