"""The convolutional feature encoder: raw 16 kHz audio -> latent frames z.

wav2vec 2.0 (Baevski et al., 2020, section 2) maps the waveform to latent speech representations
with seven temporal convolutions (strides 5, 2, 2, 2, 2, 2, 2: one frame every 320 samples, 20 ms,
over a 400-sample receptive field), each followed by GELU; BASE normalises only the first
layer's output with a GroupNorm whose groups are the channels (normalisation over time, per
channel), LARGE puts a LayerNorm over channels after every layer.

This module holds two versions, as the seed notebook does:
- NumPy functions written with explicit loops (`conv1d_from_scratch`,
  `feature_encoder_from_scratch`): readable, slow, and the oracles the tests compare against;
- `FeatureEncoder`, the Flax NNX module the model uses. It is channels-last: waveforms are
  `[batch, samples]` and outputs `[batch, frames, channels]` (the seed's PyTorch module was
  channels-first, `[batch, channels, frames]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import nnx

NormMode = Literal["group", "layer", "none"]
# Sample or frame counts: a Python int, or NumPy or JAX integer arrays (elementwise).
Lengths = TypeVar("Lengths", int, np.ndarray, jax.Array)

# torch's GroupNorm and LayerNorm default, which the reference checkpoints were trained with.
NORM_EPS = 1e-5


def _gelu_np(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU in NumPy, as `torch.nn.GELU()` and `jax.nn.gelu(approximate=False)`."""
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def conv1d_from_scratch(signal: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """1-D convolution (cross-correlation, no padding) written as an explicit loop.

    Args:
      signal: `[channels_in, length]`.
      kernel: `[channels_out, channels_in, kernel_size]` (PyTorch's layout).
      stride: step between two output positions.

    Returns:
      `[channels_out, (length - kernel_size) // stride + 1]`.
    """
    signal = np.asarray(signal)
    kernel = np.asarray(kernel)
    if signal.ndim != 2 or kernel.ndim != 3:
        raise ValueError(
            f"signal must be [channels_in, length] and kernel [channels_out, channels_in, kernel_size], "
            f"got shapes {signal.shape} and {kernel.shape}"
        )
    c_in, length = signal.shape
    c_out, k_in, k = kernel.shape
    if k_in != c_in:
        raise ValueError(f"kernel expects {k_in} input channels, signal has {c_in}")
    if length < k:
        raise ValueError(f"signal length {length} is shorter than the kernel size {k}")
    out_len = (length - k) // stride + 1
    out = np.zeros((c_out, out_len), dtype=np.result_type(signal, kernel))
    for t in range(out_len):
        window = signal[:, t * stride : t * stride + k]  # [c_in, k]: what output position t sees
        # Each output channel is the sum of its filter times the window.
        out[:, t] = np.sum(kernel * window[None, :, :], axis=(1, 2))
    return out


def _group_norm_over_time_np(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """GroupNorm with one group per channel on `[channels, time]`: each channel over time."""
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + NORM_EPS) * scale[:, None] + bias[:, None]


def _layer_norm_over_channels_np(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over channels on `[channels, time]`: each frame over its channels."""
    mean = x.mean(axis=0, keepdims=True)
    var = x.var(axis=0, keepdims=True)
    return (x - mean) / np.sqrt(var + NORM_EPS) * scale[:, None] + bias[:, None]


def feature_encoder_from_scratch(
    waveform: np.ndarray,
    d_model: int = 512,
    *,
    weights: Sequence[dict[str, np.ndarray]] | None = None,
    norm: NormMode = "group",
    layer_configs: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> np.ndarray:
    """The seven-layer conv stack in NumPy on one waveform, layer by layer.

    Args:
      waveform: `[samples]`, at least 400 samples with the default layers.
      d_model: channels of every layer (used when `weights` is None).
      weights: one dict per layer with `kernel` `[C_out, C_in, K]` and optionally `bias` `[C_out]`,
        `norm_scale`, `norm_bias` `[C_out]` (see `FeatureEncoder.to_numpy_weights`). When None,
        random weights are drawn from `seed` (He-normal kernels, identity norms), as the seed did.
      norm: "group" (GroupNorm over time on the first layer), "layer" (LayerNorm over channels
        after every layer) or "none".
      layer_configs: `(kernel_size, stride)` per layer, default `FeatureEncoder.LAYER_CONFIGS`.
      seed: seed of the random weights.
      verbose: print the shape after each layer (the seed notebook's cell 4).

    Returns:
      `[d_model, frames]` latent features.
    """
    layer_configs = list(layer_configs or FeatureEncoder.LAYER_CONFIGS)
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"waveform must be 1-D [samples], got shape {x.shape}")
    receptive = receptive_field(layer_configs)
    if x.shape[0] < receptive:
        raise ValueError(f"waveform has {x.shape[0]} samples; the encoder needs at least {receptive}")
    if weights is None:
        rng = np.random.default_rng(seed)
        weights = []
        c_in = 1
        for k, _ in layer_configs:
            fan_in = c_in * k
            weights.append(
                {
                    "kernel": (rng.standard_normal((d_model, c_in, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                    "norm_scale": np.ones(d_model, np.float32),
                    "norm_bias": np.zeros(d_model, np.float32),
                }
            )
            c_in = d_model
    if len(weights) != len(layer_configs):
        raise ValueError(f"got weights for {len(weights)} layers, expected {len(layer_configs)}")

    x = x[None, :]  # [1, samples]
    for i, ((_, stride), w) in enumerate(zip(layer_configs, weights)):
        x = conv1d_from_scratch(x, w["kernel"], stride=stride)
        if w.get("bias") is not None:
            x = x + w["bias"][:, None]
        if norm == "group" and i == 0:
            x = _group_norm_over_time_np(x, w["norm_scale"], w["norm_bias"])
        elif norm == "layer":
            x = _layer_norm_over_channels_np(x, w["norm_scale"], w["norm_bias"])
        x = _gelu_np(x).astype(np.float32)
        if verbose:
            print(f"  layer {i + 1} (kernel={layer_configs[i][0]}, stride={stride}) -> {x.shape}")
    return x


def receptive_field(layer_configs: Sequence[tuple[int, int]]) -> int:
    """Samples seen by one output frame: 400 for wav2vec 2.0's stack."""
    field, jump = 1, 1
    for kernel, stride in layer_configs:
        field += (kernel - 1) * jump
        jump *= stride
    return field


class ConvBlock(nnx.Module):
    """One conv layer: valid Conv1D -> optional norm -> GELU, channels-last."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int,
        *,
        use_bias: bool,
        norm: Literal["group", "layer"] | None,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        self.stride = stride
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel_size,),
            strides=(stride,),
            padding="VALID",
            use_bias=use_bias,
            # He-normal, as the reference initialises its conv layers (kaiming_normal_).
            kernel_init=nnx.initializers.he_normal(),
            dtype=dtype,
            rngs=rngs,
        )
        self.norm: nnx.GroupNorm | nnx.LayerNorm | None
        if norm == "group":
            # One group per channel: normalises each channel over time (and over padding too).
            self.norm = nnx.GroupNorm(out_features, num_groups=out_features, epsilon=NORM_EPS, dtype=dtype, rngs=rngs)
        elif norm == "layer":
            self.norm = nnx.LayerNorm(out_features, epsilon=NORM_EPS, dtype=dtype, rngs=rngs)
        else:
            self.norm = None

    def __call__(self, x: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        """`[batch, time, C_in]` -> `[batch, time', C_out]`.

        `frame_lengths` (`[batch]` int, this layer's real output frames per row) restricts a group
        norm's statistics to each row's real frames; the padded frames' outputs are then meaningless.
        """
        x = self.conv(x)
        if isinstance(self.norm, nnx.GroupNorm) and frame_lengths is not None:
            real = jnp.arange(x.shape[1])[None, :] < frame_lengths[:, None]  # [batch, time']
            x = self.norm(x, mask=jnp.broadcast_to(real[:, :, None], x.shape))
        elif self.norm is not None:
            x = self.norm(x)
        return jax.nn.gelu(x, approximate=False)


class FeatureEncoder(nnx.Module):
    """wav2vec 2.0's conv feature encoder in Flax NNX, channels-last.

    Example:
      >>> encoder = FeatureEncoder(d_model=512, rngs=nnx.Rngs(0))
      >>> z = encoder(jnp.zeros((2, 16000)))   # [2, 49, 512]
    """

    LAYER_CONFIGS: ClassVar[list[tuple[int, int]]] = [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]

    def __init__(
        self,
        d_model: int = 512,
        *,
        conv_dim: Sequence[int] | None = None,
        conv_kernel: Sequence[int] | None = None,
        conv_stride: Sequence[int] | None = None,
        conv_bias: bool = False,
        norm: NormMode = "group",
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        """Builds the stack.

        Args:
          d_model: channels of every layer when `conv_dim` is not given.
          conv_dim, conv_kernel, conv_stride: per-layer channels, kernel sizes and strides
            (transformers' config names); default `LAYER_CONFIGS` with `d_model` channels.
          conv_bias: whether the convolutions have a bias (False for BASE, True for LARGE).
          norm: "group" (GroupNorm on the first layer only, BASE), "layer" (LayerNorm after every
            layer, LARGE) or "none".
          dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32.
          rngs: parameter initialisation only.
        """
        conv_kernel = list(conv_kernel or [k for k, _ in self.LAYER_CONFIGS])
        conv_stride = list(conv_stride or [s for _, s in self.LAYER_CONFIGS])
        conv_dim = list(conv_dim or [d_model] * len(conv_kernel))
        if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must have the same length, got "
                f"{len(conv_dim)}, {len(conv_kernel)} and {len(conv_stride)}"
            )
        if norm not in ("group", "layer", "none"):
            raise ValueError(f"norm must be 'group', 'layer' or 'none', got {norm!r}")
        if min(conv_dim) < 1 or min(conv_kernel) < 1 or min(conv_stride) < 1:
            raise ValueError("conv_dim, conv_kernel and conv_stride must all be positive")
        self.layer_configs = tuple(zip(conv_kernel, conv_stride))  # a tuple keeps the GraphDef hashable
        self.norm_mode = norm
        self.out_features = conv_dim[-1]
        blocks = []
        in_features = 1
        for i, (out_features, kernel, stride) in enumerate(zip(conv_dim, conv_kernel, conv_stride)):
            layer_norm: Literal["group", "layer"] | None = (
                "layer" if norm == "layer" else ("group" if norm == "group" and i == 0 else None)
            )
            blocks.append(
                ConvBlock(
                    in_features,
                    out_features,
                    kernel,
                    stride,
                    use_bias=conv_bias,
                    norm=layer_norm,
                    dtype=dtype,
                    rngs=rngs,
                )
            )
            in_features = out_features
        self.layers = nnx.List(blocks)

    @property
    def total_stride(self) -> int:
        """Samples between two output frames (320 for wav2vec 2.0: 20 ms at 16 kHz)."""
        return int(np.prod([s for _, s in self.layer_configs]))

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for wav2vec 2.0: 25 ms at 16 kHz)."""
        return receptive_field(self.layer_configs)

    def compute_output_length(self, num_samples: Lengths) -> Lengths:
        """Frames produced from `num_samples` samples: the valid-conv formula applied per layer.

        Works on Python ints (returns an int, 0 when the input is shorter than the receptive field),
        NumPy and JAX integer arrays (e.g. the unpadded lengths of a batch).
        """
        length = num_samples
        for kernel, stride in self.layer_configs:
            length = (length - kernel) // stride + 1
        if isinstance(length, int):
            return max(length, 0)
        xp = jnp if isinstance(length, jax.Array) else np
        return xp.maximum(length, 0)

    def check_input(self, waveform: jax.Array | np.ndarray) -> None:
        """Raises a ValueError naming the problem for waveforms the conv stack can't take."""
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be [batch, samples], got shape {tuple(waveform.shape)}")
        if not jnp.issubdtype(waveform.dtype, jnp.floating):
            raise ValueError(f"waveform must be a float array, got dtype {waveform.dtype}")
        if waveform.shape[1] < self.receptive_field:
            raise ValueError(
                f"waveform has {waveform.shape[1]} samples; the feature encoder needs at least "
                f"{self.receptive_field} (its receptive field)"
            )

    def __call__(self, waveform: jax.Array, num_samples: jax.Array | None = None) -> jax.Array:
        """`[batch, samples]` float -> `[batch, frames, conv_dim[-1]]`.

        Args:
          waveform: `[batch, samples]`, each row right-padded.
          num_samples: optional `[batch]` int real samples per row: the masked group norm. The
            first layer's GroupNorm then takes its statistics over each row's real frames only, and
            since a valid convolution's first `compute_output_length(n)` outputs read only the first
            `n` inputs, every real frame equals the row's frame alone at its own length; padded frames
            are meaningless (the context network zeroes them). None: statistics over the whole row,
            padding included, as the reference computes them.
        """
        self.check_input(waveform)
        if num_samples is not None and tuple(num_samples.shape) != waveform.shape[:1]:
            raise ValueError(f"num_samples must be [batch] = {waveform.shape[:1]}, got {tuple(num_samples.shape)}")
        x = waveform[:, :, None]  # a single input channel, channels-last
        lengths = None if num_samples is None else jnp.asarray(num_samples, jnp.int32)
        for block, (kernel, stride) in zip(self.layers, self.layer_configs):
            lengths = None if lengths is None else jnp.maximum((lengths - kernel) // stride + 1, 0)
            x = block(x, lengths)
        return x

    def to_numpy_weights(self) -> list[dict[str, np.ndarray]]:
        """The weights in the layout of `feature_encoder_from_scratch` (PyTorch's `[C_out, C_in, K]`)."""
        weights = []
        for block in self.layers:
            layer = {"kernel": np.transpose(np.asarray(block.conv.kernel[...]), (2, 1, 0))}
            if block.conv.bias is not None:
                layer["bias"] = np.asarray(block.conv.bias[...])
            if block.norm is not None:
                scale, bias = block.norm.scale, block.norm.bias
                assert scale is not None and bias is not None  # the norms are built with both
                layer["norm_scale"] = np.asarray(scale[...])
                layer["norm_bias"] = np.asarray(bias[...])
            weights.append(layer)
        return weights
