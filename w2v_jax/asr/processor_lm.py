"""transformers' `Wav2Vec2ProcessorWithLM` files: an n-gram LM beside an exported model, and back.

`Wav2Vec2ProcessorWithLM.from_pretrained(folder)` reads the feature extractor and tokenizer files
`jax-to-hf` writes (the feature extractor's `processor_class` then names it, which makes the ASR
pipeline decode with the LM) plus pyctcdecode's decoder: `alphabet.json` (the vocabulary's tokens in id order,
the blank as "", the word delimiter as " ", `<unk>` as "⁇") and `language_model/` holding the
KenLM file, `unigrams.txt` (its words) and `attrs.json` (alpha, beta, unk_score_offset,
score_boundary). pyctcdecode scales the LM's log10 scores by `alpha` after converting them to
natural logarithms, where flashlight weighs log10 scores directly, so `alpha = lm_weight / ln 10`
and `beta = word_score`.

`import_processor_lm` copies such a folder's `language_model/` into our checkpoint folder and
writes the lexicon of its unigrams (`language_model/lexicon.txt`, words spelled in the model's
vocabulary) and the decoder settings in ours (`language_model/decoder.json`: lm_weight, word_score),
for `transcribe --decoder=beam`. The folder is untrusted: a symbolic link that leads out of it, or
anything but folders and regular files in `language_model/`, is refused before anything is read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from w2v_jax.asr.beam_search import KENLM_BINARY_MAGIC, BeamSearchOptions
from w2v_jax.asr.lm import BOS, EOS, UNK, NgramLM, write_lexicon
from w2v_jax.checkpoints.hf import PREPROCESSOR_FILE
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.json_files import JSONFileError, read_json

PROCESSOR_CLASS = "Wav2Vec2ProcessorWithLM"
ALPHABET_FILE = "alphabet.json"
LM_DIR = "language_model"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"
LEXICON_FILE = "lexicon.txt"
DECODER_FILE = "decoder.json"
UNK_SCORE_OFFSET = -10.0  # pyctcdecode's default: log-probability offset of a word outside the unigrams
_PYCTCDECODE_UNK = "\u2047"  # "⁇"


def alphabet_labels(vocabulary: Vocabulary) -> list[str]:
    """pyctcdecode's labels of a vocabulary, in id order (see the module docstring)."""
    special = {vocabulary.pad_token: "", vocabulary.word_delimiter_token: " ", vocabulary.unk_token: _PYCTCDECODE_UNK}
    return [special.get(token, token) for token in vocabulary.tokens]


def export_processor_lm(
    folder: str | os.PathLike,
    vocabulary: Vocabulary,
    lm: str | os.PathLike,
    options: BeamSearchOptions = BeamSearchOptions(),
) -> Path:
    """Writes `alphabet.json` and `language_model/` (an ARPA `lm`, its unigrams, the weights of
    `options`) into an exported transformers folder; returns the `language_model/` folder.

    Raises a ValueError naming `lm` when it is not a readable ARPA file (pyctcdecode needs its words).
    """
    lm = Path(lm)
    if lm.is_file() and lm.read_bytes()[: len(KENLM_BINARY_MAGIC)] == KENLM_BINARY_MAGIC:
        raise ValueError(f"{lm}: export needs the ARPA file (its words go into unigrams.txt), not a KenLM binary")
    words = [w for w in NgramLM.read_arpa(lm, max_order=1).vocabulary if w not in (BOS, EOS, UNK)]
    folder = Path(folder)
    # The pipeline loads the LM decoder when the feature extractor names an LM processor.
    preprocessor = folder / PREPROCESSOR_FILE
    settings = read_json(preprocessor, expect=dict)
    preprocessor.write_text(json.dumps({**settings, "processor_class": PROCESSOR_CLASS}, indent=2) + "\n")
    (folder / ALPHABET_FILE).write_text(json.dumps({"labels": alphabet_labels(vocabulary), "is_bpe": False}))
    lm_dir = folder / LM_DIR
    if lm_dir.exists():
        shutil.rmtree(lm_dir)
    lm_dir.mkdir()
    shutil.copyfile(lm, lm_dir / (lm.stem + ".arpa"))
    (lm_dir / UNIGRAMS_FILE).write_text("".join(f"{w}\n" for w in sorted(words)), encoding="utf-8")
    attrs = {
        "alpha": options.lm_weight / math.log(10),
        "beta": options.word_score,
        "unk_score_offset": UNK_SCORE_OFFSET,
        "score_boundary": True,
    }
    (lm_dir / ATTRS_FILE).write_text(json.dumps(attrs))
    return lm_dir


def _check_within(folder: Path, root: Path) -> None:
    """Raises a ValueError naming the first entry of `folder` (itself included) that is a symbolic link
    leading out of `root`, or neither a folder nor a regular file (a device would be read forever)."""
    root = Path(os.path.realpath(root))
    for entry in (folder, *sorted(folder.rglob("*"))):
        # realpath, not Path.resolve: a link loop resolves to a path (then neither file nor folder).
        if not Path(os.path.realpath(entry)).is_relative_to(root):
            raise ValueError(f"{entry}: a symbolic link out of {root}: refused")
        if not (entry.is_dir() or entry.is_file()):
            raise ValueError(f"{entry}: neither a folder nor a regular file: refused")


def import_processor_lm(
    source: str | os.PathLike, destination: str | os.PathLike, vocabulary: Vocabulary
) -> Path | None:
    """Copies a transformers folder's `language_model/` into `destination` with a lexicon of its
    words and `decoder.json` (`lm_weight`, `word_score`); None when `source` has none.

    Raises a ValueError naming the file when the folder lacks its KenLM file or `attrs.json`.
    """
    source_dir = Path(source) / LM_DIR
    if not source_dir.is_dir():
        return None
    _check_within(source_dir, Path(source))
    attrs_path = source_dir / ATTRS_FILE
    if not attrs_path.is_file():
        raise ValueError(f"{attrs_path}: missing (a pyctcdecode language_model/ folder has attrs.json)")
    models = [p for p in source_dir.iterdir() if p.suffix in (".arpa", ".bin", ".binary")]
    if len(models) != 1:
        raise ValueError(f"{source_dir}: expected one KenLM file (.arpa, .bin or .binary), found {len(models)}")
    try:
        attrs = read_json(attrs_path, expect=dict)
    except JSONFileError as error:
        raise ValueError(f"{attrs_path}: not pyctcdecode's attrs.json ({error.problem})") from None
    try:
        weights = {"lm_weight": float(attrs["alpha"]) * math.log(10), "word_score": float(attrs["beta"])}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{attrs_path}: not pyctcdecode's attrs.json ({error})") from None
    target = Path(destination) / LM_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source_dir, target)
    unigrams = source_dir / UNIGRAMS_FILE
    if unigrams.is_file():
        words = unigrams.read_text(encoding="utf-8").split()
    else:
        words = [w for w in NgramLM.read_arpa(models[0], max_order=1).vocabulary if w not in (BOS, EOS, UNK)]
    write_lexicon(words, target / LEXICON_FILE, vocabulary)
    (target / DECODER_FILE).write_text(json.dumps({"lm": models[0].name, **weights}, indent=1) + "\n")
    return target
