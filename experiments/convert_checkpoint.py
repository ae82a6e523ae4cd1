"""Converts wav2vec 2.0 pretraining checkpoints between transformers and w2v_jax.

    # a transformers Wav2Vec2ForPreTraining folder (config.json + model.safetensors or
    # pytorch_model.bin) -> a w2v_jax folder (config.json + params.safetensors)
    python -m experiments.convert_checkpoint hf-to-jax path/to/hf_folder path/to/jax_folder

    # a w2v_jax folder -> a folder `Wav2Vec2ForPreTraining.from_pretrained` loads
    python -m experiments.convert_checkpoint jax-to-hf path/to/jax_folder path/to/hf_folder

All logic lives in `w2v_jax.convert`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from w2v_jax import convert


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=("hf-to-jax", "jax-to-hf"))
    parser.add_argument("source", help="folder to read")
    parser.add_argument("destination", help="folder to write (created if missing)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="convert weights holding NaN or infinity")
    args = parser.parse_args(argv)
    if args.direction == "hf-to-jax":
        config, model = convert.load_hf_checkpoint(args.source, allow_nonfinite=args.allow_nonfinite)
        convert.save_checkpoint(config, model, args.destination)
    else:
        config, model = convert.load_checkpoint(args.source, allow_nonfinite=args.allow_nonfinite)
        convert.save_hf_checkpoint(config, model, args.destination)
    print(f"{args.direction}: {args.source} -> {args.destination}")


if __name__ == "__main__":
    main()
