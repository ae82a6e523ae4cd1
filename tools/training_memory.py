"""Training memory per device of the fairseq2 and Omnilingual presets: an estimate from their shapes.
A maintenance tool of this repository, run from its root (docs/checkpoints.md has its table):

    python -m tools.training_memory [--seconds=15] [--batch=1] [--devices=1,8,64]

Each preset's parameters are counted on abstract models (`nnx.eval_shape`: nothing is allocated)
of one and two Transformer layers, exact at any depth. Per device, for pretraining with AdamW (`w2v_jax.training`):

- training state: float32 parameters, gradients and AdamW's two moments, 16 bytes per parameter;
  FSDP over N devices shards all four, 16 P / N (plus one layer's gathered parameters at a time,
  left out: at most 2% of the 7B's state on one device);
- activations kept for the backward pass, bfloat16 (2 bytes), per utterance of `seconds` (T = 50
  frames a second, S = 16,000 samples): the conv stack's outputs, norms and GELUs (3 x 512 x
  S/5 x (1 + 1/2 + ...) ~ 3 x 512 x 2S/5 elements) and per Transformer layer its saved tensors
  (T x (9 D + 2 F): the two norms' outputs, q, k, v, the attention's output and projection, the
  residual, the FFN's input and output; the FFN's inner activation before and after GELU) plus the
  attention probabilities (H x T^2; none with cuDNN's fused attention, which keeps T x H);
  with rematerialisation (`train.remat`: the conv stack and each layer recomputed in the backward
  pass) a layer keeps its input alone (T x D) and one block's set (the conv stack's or a layer's)
  exists at a time.

It is an estimate, not a measurement: XLA's buffer assignment reuses and fuses, so a compiled step
may hold less (fused elementwise outputs) or more (temporaries of the loss, float32 softmax
copies). Data parallelism without FSDP keeps the whole state on every device.
"""

import argparse

import jax
import numpy as np
from flax import nnx

from w2v_jax.checkpoints.fairseq2 import PRESETS, PRETRAINING_FAMILY
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.model import Wav2Vec2ForPreTraining

STATE_BYTES = 16  # float32 parameter, gradient, and AdamW's two moments
ACTIVATION_BYTES = 2  # bfloat16
FRAMES_PER_SECOND = 50


def parameter_count(config) -> int:
    """Parameters of the pretraining model of `config`, counted on abstract models of one and two
    Transformer layers (every layer has the same parameters, so the count is exact at any depth)."""

    def count(layers: int) -> int:
        model = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(config.replace(num_hidden_layers=layers)))
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))

    one, two = count(1), count(2)
    return one + (config.num_hidden_layers - 1) * (two - one)


def activation_bytes(config, seconds: float, *, remat: bool, fused_attention: bool) -> float:
    """Bytes of activations kept for the backward pass of one utterance (module docstring)."""
    frames, samples = FRAMES_PER_SECOND * seconds, SAMPLE_RATE * seconds
    conv = 3 * config.conv_dim[0] * 2 * samples / 5
    dim, ffn, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    attention = frames * heads if fused_attention else heads * frames**2
    layer = frames * (9 * dim + 2 * ffn) + attention
    layers = config.num_hidden_layers
    if remat:  # the layers' inputs, then one rematerialised block at a time (the conv stack is one)
        return ACTIVATION_BYTES * (layers * frames * dim + max(conv, layer))
    return ACTIVATION_BYTES * (conv + layers * layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="utterance length")
    parser.add_argument("--batch", type=int, default=1, help="utterances per device")
    parser.add_argument("--devices", default="1,8,64", help="FSDP sizes, comma-separated")
    args = parser.parse_args()
    devices = [int(n) for n in args.devices.split(",")]
    gib = 2.0**30
    header = ["preset", "parameters", *(f"state/FSDP{n}" for n in devices)]
    header += ["act.", "act. remat", "act. remat+fused"]
    print(" | ".join(header))
    for name, preset in PRESETS.items():
        if preset.family != PRETRAINING_FAMILY:
            continue
        config = preset.config
        count = parameter_count(config)
        row = [name, f"{count:,}", *(f"{STATE_BYTES * count / n / gib:.2f}" for n in devices)]
        for remat, fused in ((False, False), (True, False), (True, True)):
            row.append(
                f"{args.batch * activation_bytes(config, args.seconds, remat=remat, fused_attention=fused) / gib:.2f}"
            )
        print(" | ".join(row))
    print(f"(GiB per device; {args.batch} utterance(s) of {args.seconds:g} s per device, bfloat16 activations)")


if __name__ == "__main__":
    main()
