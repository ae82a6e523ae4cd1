"""Checks fairseq import and export at full size: a BASE (wav2vec_small.pt's fields) or LARGE
(wav2vec_vox_new.pt's) checkpoint in fairseq's structure with random weights of a trained model's
scale, imported and compared with transformers' model loaded through its converter's mapping, then
exported and compared bit for bit. Prints the figures `docs/checkpoints.md` quotes.

    python -m tools.check_fairseq_full_size --size=base   # 380 MB file; --size=large: 1.3 GB

Needs the test extra (torch, transformers, omegaconf): it builds the checkpoint as the tests do.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from absl import flags

from tests.support.fairseq import PUBLIC_MODELS, fairseq_weights, save_fairseq_style, transformers_state_dict
from tests.support.parity import relative_error
from w2v_jax.checkpoints.conversion import convert
from w2v_jax.checkpoints.fairseq import load_fairseq_checkpoint
from w2v_jax.checkpoints.torch_files import read_torch_checkpoint
from w2v_jax.cli.launching import launch
from w2v_jax.config import Wav2Vec2Config

_MODELS = {"base": "wav2vec_small", "large": "wav2vec_vox_new / xlsr_53_56k / xlsr_300m"}


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    return SimpleNamespace(
        size=flags.DEFINE_enum("size", "base", list(_MODELS), "The public config to build.", flag_values=flag_values),
    )


def _timed(label: str, function, *args):
    start = time.perf_counter()
    result = function(*args)
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main(argv: list[str], args: SimpleNamespace) -> None:
    del argv
    size = args.size.value
    fields = PUBLIC_MODELS[_MODELS[size]]
    weights = fairseq_weights(fields, None)
    with torch.no_grad():
        for key, value in weights.items():
            if not key.endswith(("norm.weight", ".2.weight", ".2.1.weight", "weight_g")):
                value.mul_(0.1)  # std 0.05, a trained model's scale (std 0.5 compounds over 12+ layers)
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        save_fairseq_style(folder / "in.pt", weights, fields, "args" if size == "base" else "cfg")
        parameters = sum(v.numel() for v in weights.values())
        print(f"{size}: {len(weights)} tensors, {parameters / 1e6:.1f}M parameters")
        _timed("read_torch_checkpoint (no torch)", read_torch_checkpoint, folder / "in.pt")
        _timed("torch.load(weights_only=False)", lambda: torch.load(folder / "in.pt", weights_only=False))
        print(_timed("fairseq-to-jax", convert, "fairseq-to-jax", folder / "in.pt", folder / "ours"))
        imported = load_fairseq_checkpoint(folder / "in.pt")
        reference = transformers.Wav2Vec2ForPreTraining(
            transformers.Wav2Vec2Config(**Wav2Vec2Config.preset(size).to_hf_dict())
        ).eval()
        missing, unexpected = reference.load_state_dict(transformers_state_dict(weights, size == "base"), strict=False)
        if missing or unexpected:
            raise SystemExit(f"transformers' model: missing {missing}, unexpected {unexpected}")
        audio = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32)
        with torch.no_grad():
            expected = reference(torch.from_numpy(audio), output_hidden_states=True)
        ours = imported.model(audio, output_hidden_states=True)
        hidden = max(relative_error(a, b.numpy()) for a, b in zip(ours.hidden_states, expected.hidden_states))
        print(
            f"relative error vs transformers: hidden states {hidden:.1e}, projected states "
            f"{relative_error(ours.projected_states, expected.projected_states.numpy()):.1e}, quantized targets "
            f"{relative_error(ours.projected_quantized_states, expected.projected_quantized_states.numpy()):.1e}"
        )
        _timed("jax-to-fairseq", convert, "jax-to-fairseq", folder / "ours", folder / "back" / "back.pt")
        back = torch.load(folder / "back" / "back.pt", weights_only=True)["model"]
        exact = back.keys() == weights.keys() and all(torch.equal(back[k], v) for k, v in weights.items())
        print(f"fairseq -> ours -> fairseq bit for bit: {exact}")


def run() -> None:
    """`python -m tools.check_fairseq_full_size`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
