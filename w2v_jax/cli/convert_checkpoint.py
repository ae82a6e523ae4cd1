"""Converts wav2vec 2.0 checkpoints (pretraining, CTC fine-tuned, bare encoder) between transformers and w2v_jax.

    # a transformers Wav2Vec2ForPreTraining folder (config.json + model.safetensors or
    # pytorch_model.bin) -> a w2v_jax folder (config.json + params.safetensors)
    w2v-convert-checkpoint hf-to-jax path/to/hf_folder path/to/jax_folder

    # a training workdir (its newest checkpoint, or --step) or a w2v_jax folder -> a folder
    # transformers' `from_pretrained`, `AutoFeatureExtractor` and pipelines load
    w2v-convert-checkpoint jax-to-hf runs/tiny path/to/hf_folder [--step=200]
    w2v-convert-checkpoint jax-to-hf path/to/jax_folder path/to/hf_folder

    # a fairseq .pt (wav2vec_small.pt, libri960_big.pt, a fine-tuned *_960h.pt with its dict.ltr.txt)
    # -> a w2v_jax folder, read without fairseq or torch; and our model -> a fairseq .pt
    w2v-convert-checkpoint fairseq-to-jax wav2vec_small_960h.pt path/to/jax_folder --dict dict.ltr.txt
    w2v-convert-checkpoint jax-to-fairseq runs/tiny path/to/out.pt

    # a fairseq2 .pt (fairseq2's wav2vec2 / wav2vec2_asr cards, Omnilingual's omniASR-W2V-*.pt and
    # omniASR-CTC-*.pt) -> a w2v_jax folder, its architecture named from its tensors' shapes (or
    # --arch: a preset or a config.json); and our model -> a fairseq2 .pt
    w2v-convert-checkpoint fairseq2-to-jax omniASR-W2V-1B.pt path/to/jax_folder [--arch=omnilingual_w2v_1b]
    w2v-convert-checkpoint fairseq2-to-jax omniASR-CTC-300M.pt path/to/jax_folder --tokenizer omniASR_tokenizer.model
    w2v-convert-checkpoint jax-to-fairseq2 runs/tiny path/to/out.pt [--step=300 --num_updates=300]

A fine-tuning workdir exports its best model by default (`--step` picks a checkpoint), to a folder
that `Wav2Vec2ForCTC.from_pretrained`, `Wav2Vec2Processor.from_pretrained` and
`pipeline("automatic-speech-recognition", model=...)` load; a CTC model's vocabulary (vocab.json
and the tokenizer's special tokens) goes with it both ways.

`jax-to-hf --lm=LM.arpa` also writes the n-gram LM as transformers' `Wav2Vec2ProcessorWithLM`
loads it (`alphabet.json`, `language_model/`; `--lm_weight`, `--word_score` as flashlight's, converted
for pyctcdecode); `hf-to-jax` imports such a folder's `language_model/` with a lexicon of its words
(`w2v_jax.asr.processor_lm`).

All logic: `w2v_jax.checkpoints.conversion.convert`, `w2v_jax.asr.processor_lm`.
"""

from collections.abc import Sequence
from types import SimpleNamespace

from absl import flags

from w2v_jax.asr.beam_search import BeamSearchOptions
from w2v_jax.asr.processor_lm import export_processor_lm, import_processor_lm
from w2v_jax.checkpoints.conversion import DIRECTIONS, convert
from w2v_jax.checkpoints.hf import load_vocabulary
from w2v_jax.cli.launching import launch


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    return SimpleNamespace(
        allow_nonfinite=flags.DEFINE_bool(
            "allow_nonfinite",
            False,
            "Convert weights holding NaN or infinity (refused by default).",
            flag_values=flag_values,
        ),
        dict=flags.DEFINE_string(
            "dict",
            None,
            "fairseq-to-jax: a CTC checkpoint's fairseq dictionary (dict.ltr.txt; default: beside the .pt).",
            flag_values=flag_values,
        ),
        arch=flags.DEFINE_string(
            "arch",
            None,
            "fairseq2-to-jax: the architecture, a fairseq2 preset's name (w2v_jax.checkpoints.fairseq2.PRESETS) or "
            "a config.json (default: the one our exporter stored, else the preset the tensors' shapes name).",
            flag_values=flag_values,
        ),
        tokenizer=flags.DEFINE_string(
            "tokenizer",
            None,
            "fairseq2-to-jax: a CTC model's tokenizer, its SentencePiece .model (fairseq2 files hold no vocabulary).",
            flag_values=flag_values,
        ),
        num_updates=flags.DEFINE_integer(
            "num_updates",
            None,
            "jax-to-fairseq2: the pretraining model's quantizer.num_updates, the update count fairseq2's Gumbel "
            "temperature schedule continues from (default 0; e.g. the run's checkpoint step).",
            flag_values=flag_values,
        ),
        step=flags.DEFINE_integer(
            "step",
            None,
            "jax-to-hf / jax-to-fairseq / jax-to-fairseq2 from a training workdir: its checkpoint step (default: the "
            "best model of a fine-tuning run, else the newest checkpoint).",
            flag_values=flag_values,
        ),
        lm=flags.DEFINE_string(
            "lm", None, "jax-to-hf: an ARPA LM for Wav2Vec2ProcessorWithLM (default: none).", flag_values=flag_values
        ),
        lm_weight=flags.DEFINE_float(
            "lm_weight",
            BeamSearchOptions.lm_weight,
            "jax-to-hf --lm: LM weight (flashlight's).",
            flag_values=flag_values,
        ),
        word_score=flags.DEFINE_float(
            "word_score", BeamSearchOptions.word_score, "jax-to-hf --lm: word score.", flag_values=flag_values
        ),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    """`argv`: the program name, then `DIRECTION SOURCE DESTINATION`."""
    if len(argv) != 4 or argv[1] not in DIRECTIONS:
        raise SystemExit(f"usage: DIRECTION SOURCE DESTINATION with DIRECTION in {DIRECTIONS}; got {argv[1:]}")
    direction, source, destination = argv[1:]
    if args.lm.value is not None and direction != "jax-to-hf":
        raise SystemExit("--lm applies to jax-to-hf (hf-to-jax imports the source's language_model/ itself)")
    try:
        summary = convert(
            direction,
            source,
            destination,
            step=args.step.value,
            allow_nonfinite=args.allow_nonfinite.value,
            dictionary=args.dict.value,
            arch=args.arch.value,
            tokenizer=args.tokenizer.value,
            num_updates=args.num_updates.value,
        )
        vocabulary = load_vocabulary(destination)
        lm_dir = None
        if args.lm.value is not None:
            if vocabulary is None:
                raise ValueError(f"--lm needs a CTC model with a vocabulary; {source} has none")
            options = BeamSearchOptions(lm_weight=args.lm_weight.value, word_score=args.word_score.value)
            lm_dir = export_processor_lm(destination, vocabulary, args.lm.value, options)
        elif direction == "hf-to-jax" and vocabulary is not None:
            lm_dir = import_processor_lm(source, destination, vocabulary)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(f"{direction}: {source} -> {destination}" + (f" (with {lm_dir})" if lm_dir else ""))
    if summary:
        print(summary)


def run() -> None:
    """The `w2v-convert-checkpoint` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
