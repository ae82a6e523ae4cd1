"""Vocabulary: vocab.json round trip and greedy decoding exactly as transformers' CTC tokenizer decodes."""

import itertools
import json
import re

import numpy as np
import pytest
from transformers import Wav2Vec2CTCTokenizer

from tests.support import NESTED_JSON
from w2v_jax.data.vocabulary import SPECIAL_TOKENS, Vocabulary

LETTERS = Vocabulary.from_symbols("zabé'c")
PHONES = Vocabulary.from_symbols(["aɪ", "ə-", "t", "??", "ɑ̃"])


def decode_from_scratch(frame_ids, vocabulary):
    """Oracle in plain Python: collapse repeated ids, drop blanks, map, `|` -> space, strip."""
    tokens = [vocabulary.tokens[i] if i < len(vocabulary) else "<unk>" for i in frame_ids]
    collapsed = [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
    return "".join(" " if t == "|" else t for t in collapsed if t != "<pad>").strip()


@pytest.fixture(scope="module", params=[LETTERS, PHONES], ids=["letters", "phones"])
def vocabulary_and_tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    request.param.save(folder)
    return request.param, Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))


def test_built_vocabulary_layout():
    assert LETTERS.tokens == SPECIAL_TOKENS + tuple("'abcz") + ("é",)
    assert (LETTERS.pad_id, LETTERS.unk_id, LETTERS.token_to_id["|"]) == (0, 3, 4)
    assert PHONES.tokens[5:] == tuple(sorted(["aɪ", "ə-", "t", "??", "ɑ̃"]))


def test_save_load_round_trip(tmp_path):
    path = LETTERS.save(tmp_path)
    assert path == tmp_path / "vocab.json"
    assert json.loads(path.read_text(encoding="utf-8")) == LETTERS.token_to_id
    assert Vocabulary.load(tmp_path) == LETTERS and Vocabulary.load(path) == LETTERS


def test_tokenizer_reads_the_same_ids(vocabulary_and_tokenizer):
    vocabulary, tokenizer = vocabulary_and_tokenizer
    assert tokenizer.get_vocab() == vocabulary.token_to_id
    assert tokenizer.pad_token_id == vocabulary.pad_id and tokenizer.unk_token_id == vocabulary.unk_id


def test_decode_matches_tokenizer_on_random_and_edge_cases(vocabulary_and_tokenizer):
    vocabulary, tokenizer = vocabulary_and_tokenizer
    n = len(vocabulary)
    pad, delimiter, unk, bos = 0, 4, 3, 1
    a, b = 5, 6
    edge_cases = [
        [],
        [pad],
        [pad] * 7,  # all blank
        [delimiter, a, b, delimiter],
        [delimiter, delimiter, pad, delimiter, a],  # leading/trailing/repeated `|`
        [a, delimiter, pad, delimiter, b],
        [a, delimiter, delimiter, b],  # two spaces stay two
        [a, a, pad, a, b, b],
        [unk, unk, pad, unk],
        [bos, a, 2],
        [a, n, n + 3, b],  # unknown ids -> <unk>
    ]
    rng = np.random.default_rng(0)
    # Blanks and delimiters drawn often, as a CTC model emits them.
    weights = np.ones(n)
    weights[[pad, delimiter]] = 6
    random_cases = [rng.choice(n, rng.integers(1, 30), p=weights / weights.sum()).tolist() for _ in range(300)]
    for frame_ids in edge_cases + random_cases:
        expected = tokenizer.decode(frame_ids)  # what the ASR pipeline calls (special tokens kept)
        assert vocabulary.decode(np.asarray(frame_ids, np.int64)) == expected, frame_ids
        assert decode_from_scratch(frame_ids, vocabulary) == expected, frame_ids


def test_decode_tokens_keeps_token_boundaries():
    t, ai = PHONES.token_to_id["t"], PHONES.token_to_id["aɪ"]
    assert PHONES.decode_tokens([0, t, t, 0, t, ai, ai, 0]) == ["t", "t", "aɪ"]


def test_phone_transcripts_keep_phones_apart():
    # Phones span several characters ("aɪ"): joined like letters, "t aɪ t" would read "taɪt".
    t, ai = PHONES.token_to_id["t"], PHONES.token_to_id["aɪ"]
    ids = [0, t, t, 0, t, ai, ai, 0, t]
    assert PHONES.decode(ids) == "ttaɪt"
    assert PHONES.decode(ids, separator=" ") == "t t aɪ t"


def test_encode_maps_unknown_symbols_and_counts_them():
    ids, unknown = LETTERS.encode(["a", "b", "q", "|", "é", "Q"])
    assert ids.dtype == np.int32 and unknown == 2
    assert ids.tolist() == [LETTERS.token_to_id[t] for t in ["a", "b", "<unk>", "|", "é", "<unk>"]]
    ids, unknown = LETTERS.encode([])
    assert ids.shape == (0,) and unknown == 0


def test_a_single_cased_vocabulary_takes_labels_in_its_own_case():
    """fairseq's LibriSpeech dictionary and transformers' base-960h spell in upper case, labels are
    normalised to lower case: a vocabulary of one case maps the other case into its own; a token it
    has stays itself; mixed case (or none: phones) maps nothing."""
    upper = Vocabulary.from_symbols("ABC'")
    assert upper.casing == "upper" and LETTERS.casing == "lower"
    assert Vocabulary.from_symbols("aB").casing is None and Vocabulary.from_symbols(["1", "2"]).casing is None
    assert [upper.model_token(t) for t in ["a", "C", "'", "|", "<unk>", "d"]] == ["A", "C", "'", "|", "<unk>", "d"]
    ids, unknown = upper.encode(list("abc|d"))
    assert ids.tolist() == [upper.token_to_id[t] for t in ["A", "B", "C", "|", "<unk>"]] and unknown == 1
    mixed = Vocabulary.from_symbols("aB")
    assert mixed.encode(["A", "b"])[1] == 2


def test_bad_vocabularies_are_named(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary(("<pad>", "<unk>", "a", "a"))
    with pytest.raises(ValueError, match="pad_token"):
        Vocabulary(("<unk>", "a"))
    with pytest.raises(ValueError, match="whitespace"):
        Vocabulary.from_symbols(["a b"])
    with pytest.raises(ValueError, match="no such vocabulary"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"en": {"<pad>": 0}}))
    with pytest.raises(ValueError, match="per-language"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 2}))
    with pytest.raises(ValueError, match=r"ids must be 0\.\.1"):
        Vocabulary.load(tmp_path)


@pytest.mark.parametrize(
    "text, problem",
    [
        (NESTED_JSON, "JSON nested deeper"),
        ('["<pad>", "<unk>"]', "expected a JSON object at the top level, found an array$"),
    ],
)
def test_a_vocabulary_that_is_no_json_object_is_one_line_naming_it(tmp_path, text, problem):
    (tmp_path / "vocab.json").write_text(text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'vocab.json'))}: {problem}"):
        Vocabulary.load(tmp_path)


def test_every_short_sequence_decodes_like_the_tokenizer(tmp_path):
    """Exhaustive: 6 tokens and one unknown id, every sequence up to length 4 (2801 sequences)."""
    vocabulary = Vocabulary.from_symbols("a")
    vocabulary.save(tmp_path)
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    for length in range(5):
        for frame_ids in itertools.product(range(len(vocabulary) + 1), repeat=length):
            assert vocabulary.decode(frame_ids) == tokenizer.decode(list(frame_ids)), frame_ids
