"""fairseq2 checkpoints: import against transformers' model, export, presets, the two top-level layouts.

fairseq2 is not in the suite (it pins a CUDA torch of several GB; `tools/fairseq2_interop.py` is the
one-off check against fairseq2 itself, docs/checkpoints.md says what it showed). The files here are
built in fairseq2's structure without our key map: fairseq-style weights (`tests.support.fairseq`)
renamed by fairseq2's own fairseq-to-fairseq2 key maps (`tests.support.fairseq2`), while the same
weights go into transformers' model through transformers' converter's table: our import of the
fairseq2 file must compute what transformers computes.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from tests.checkpoints.test_fairseq import EXPECTED, FIELDS, TOLERANCE, _audio, _reference, assert_ctc_outputs_match
from tests.support import HANG_TIMEOUT
from tests.support.fairseq import fairseq_weights, save_fairseq_style
from tests.support.fairseq2 import fairseq2_from_fairseq, save_fairseq2_style
from tests.support.launchers import run_main
from tests.support.parity import relative_error
from w2v_jax.checkpoints import fairseq2
from w2v_jax.checkpoints.hf import hf_keys
from w2v_jax.checkpoints.loading import load_ctc_checkpoint, load_encoder, load_model
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

VOCAB = 13


def _config(kind: str, **changes) -> Wav2Vec2Config:
    """Our config of the test's scaled-down BASE or LARGE (the architecture a fairseq2 card would give)."""
    return Wav2Vec2Config(**EXPECTED[kind], **changes)


def _params(model) -> list[tuple[tuple, np.ndarray]]:
    return [(path, np.asarray(v[...])) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize(
    ("kind", "layout", "prefix"), [("base", "bare", False), ("large", "model_key", True), ("large", "bare", True)]
)
def test_pretraining_file_matches_transformers(kind, layout, prefix, tmp_path):
    weights = fairseq_weights(FIELDS[kind], None)
    state = fairseq2_from_fairseq(weights, pre_ln=kind == "large", ctc=False, num_updates=1234)
    save_fairseq2_style(tmp_path / "fs2.pt", state, layout=layout, module_prefix=prefix)
    imported = fairseq2.load_fairseq2_checkpoint(tmp_path / "fs2.pt", arch=_config(kind))
    assert isinstance(imported.model, Wav2Vec2ForPreTraining)
    assert (imported.layout, imported.num_updates, imported.family) == (layout, 1234, "wav2vec2")
    assert imported.parameters == len(state) - 1  # every tensor but the update counter
    assert imported.arch is None  # these shapes are no preset's

    reference = _reference(kind, weights, None)
    audio = _audio()
    with torch.no_grad():
        expected = reference(torch.from_numpy(audio), output_hidden_states=True)
    ours = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(imported.model, audio)
    assert len(ours.hidden_states) == len(expected.hidden_states) == FIELDS[kind]["encoder_layers"] + 1
    for mine, theirs in zip(ours.hidden_states, expected.hidden_states):
        assert relative_error(mine, theirs.numpy()) < TOLERANCE
    assert relative_error(ours.projected_states, expected.projected_states.numpy()) < TOLERANCE
    assert relative_error(ours.projected_quantized_states, expected.projected_quantized_states.numpy()) < TOLERANCE


@pytest.mark.parametrize("kind", ["base", "large"])
def test_ctc_file_matches_transformers(kind, tmp_path):
    weights = fairseq_weights(FIELDS[kind], VOCAB, seed=1)
    state = fairseq2_from_fairseq(weights, pre_ln=kind == "large", ctc=True)
    save_fairseq2_style(tmp_path / "ctc.pt", state)
    imported = fairseq2.load_fairseq2_checkpoint(tmp_path / "ctc.pt", arch=_config(kind, vocab_size=VOCAB))
    assert isinstance(imported.model, Wav2Vec2ForCTC) and imported.num_updates is None
    assert imported.family == "wav2vec2_asr" and imported.parameters == len(state)

    assert_ctc_outputs_match(imported.model, _reference(kind, weights, VOCAB))


@pytest.mark.parametrize(("kind", "ctc"), [("base", False), ("large", True)])
def test_export_is_the_structure_fairseq2_loads_and_reads_back(kind, ctc, tmp_path):
    weights = fairseq_weights(FIELDS[kind], VOCAB if ctc else None, seed=2)
    state = fairseq2_from_fairseq(weights, pre_ln=kind == "large", ctc=ctc, num_updates=77)
    save_fairseq2_style(tmp_path / "in.pt", state)
    config = _config(kind, vocab_size=VOCAB) if ctc else _config(kind)
    model = fairseq2.load_fairseq2_checkpoint(tmp_path / "in.pt", arch=config).model
    assert fairseq2.save_fairseq2_checkpoint(model, tmp_path / "out.pt", num_updates=77) is None  # no preset
    back = torch.load(tmp_path / "out.pt", weights_only=True)  # what fairseq2's loader accepts
    assert back["model_key"] == "model"
    assert back["model"].keys() == state.keys()  # the keys fairseq2's own key map gives, no more
    for key, value in state.items():
        assert back["model"][key].dtype == value.dtype and torch.equal(back["model"][key], value), key
    # A model of no preset reads back without an arch: the exporter stored our config.
    again = load_model(tmp_path / "out.pt")
    assert again.config == model.config
    for (path, a), (_, b) in zip(_params(model), _params(again), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_conversion_round_trip_is_bit_exact_and_keeps_the_update_count(tmp_path, capsys):
    weights = fairseq_weights(FIELDS["large"], None, seed=3)
    state = fairseq2_from_fairseq(weights, pre_ln=True, ctc=False, num_updates=4321)
    save_fairseq2_style(tmp_path / "in.pt", state, layout="model_key")
    _config("large").to_json_file(tmp_path / "arch.json")
    run_main(
        convert_checkpoint,
        ["fairseq2-to-jax", str(tmp_path / "in.pt"), str(tmp_path / "ours"), "--arch", str(tmp_path / "arch.json")],
    )
    assert "quantizer.num_updates 4321" in capsys.readouterr().out
    # Our folder keeps no update count: the conversion back is told it.
    arguments = ["jax-to-fairseq2", str(tmp_path / "ours"), str(tmp_path / "back.pt"), "--num_updates", "4321"]
    run_main(convert_checkpoint, arguments)
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_load_model_tells_fairseq2_files_from_fairseq_files(tmp_path):
    weights = fairseq_weights(FIELDS["base"], None, seed=4)
    save_fairseq_style(tmp_path / "fairseq.pt", weights, FIELDS["base"], "cfg")
    ours = load_model(tmp_path / "fairseq.pt")  # still read as fairseq's
    fairseq2.save_fairseq2_checkpoint(ours, tmp_path / "fairseq2.pt", num_updates=5)
    for layout in ("bare", "model_key"):
        state = torch.load(tmp_path / "fairseq2.pt", weights_only=True)["model"]
        save_fairseq2_style(tmp_path / f"{layout}.pt", state, layout=layout, module_prefix=layout == "bare")
        with pytest.raises(ValueError, match=r"match no fairseq2 wav2vec2 preset .*--arch"):
            load_model(tmp_path / f"{layout}.pt")  # weights alone, and no preset's shapes
        imported = fairseq2.load_fairseq2_checkpoint(tmp_path / f"{layout}.pt", arch=ours.config)
        for (path, a), (_, b) in zip(_params(ours), _params(imported.model), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=str(path))
    # Through the exporter's stored config, every loader takes it: pretraining heads and all.
    loaded = load_model(tmp_path / "fairseq2.pt")
    assert isinstance(loaded, Wav2Vec2ForPreTraining)
    for (path, a), (_, b) in zip(_params(ours), _params(loaded), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    config, encoder, normalize = load_encoder(tmp_path / "fairseq2.pt")
    assert config == ours.config and len(nnx.to_flat_state(encoder)) < len(_params(ours))
    assert normalize is None  # a fairseq2 file says nothing of its inputs' normalisation


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"model": {}, "cfg": {}}, False),
        ({"model": {}, "args": {}}, False),
        ({"model": {}, "model_key": "model"}, True),
        ({"encoder_frontend.model_dim_proj.weight": np.zeros(1)}, True),
        ({"module.encoder.layers.0.ffn.inner_proj.bias": np.zeros(1)}, True),
        ({"feature_extractor.conv_layers.0.0.weight": np.zeros(1)}, False),
        ({"model": {"encoder_frontend.model_dim_proj.weight": np.zeros(1)}}, True),
        ({"model": {"feature_extractor.conv_layers.0.0.weight": np.zeros(1)}}, False),
    ],
)
def test_fairseq2_files_are_told_by_their_top_level(state, expected):
    assert fairseq2.is_fairseq2_state(state) is expected


def test_refusals_name_the_problem(tmp_path):
    weights = fairseq_weights(FIELDS["base"], None)
    save_fairseq2_style(tmp_path / "x.pt", fairseq2_from_fairseq(weights, pre_ln=False, ctc=False))
    with pytest.raises(ValueError, match=r"^[^\n]*x.pt: its tensors' shapes match no fairseq2 wav2vec2 preset.*--arch"):
        fairseq2.load_fairseq2_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unknown fairseq2 arch 'huge'"):
        fairseq2.load_fairseq2_checkpoint(tmp_path / "x.pt", arch="huge")
    with pytest.raises(ValueError, match="arch 'base_10h' is a wav2vec2_asr model, but the file holds a pretraining"):
        fairseq2.load_fairseq2_checkpoint(tmp_path / "x.pt", arch="base_10h")
    with pytest.raises(ValueError, match="x.pt: as fairseq2 arch base: .*asks for 12 layers but the weights hold"):
        fairseq2.load_fairseq2_checkpoint(tmp_path / "x.pt", arch="base")
    extra = fairseq2_from_fairseq(weights, pre_ln=False, ctc=False) | {"encoder.layers.0.adapter.weight": torch.ones(2)}
    save_fairseq2_style(tmp_path / "extra.pt", extra)
    with pytest.raises(ValueError, match=r"no place in the model: \['encoder.layers.0.adapter.weight'\]"):
        fairseq2.load_fairseq2_checkpoint(tmp_path / "extra.pt", arch=_config("base"))


# transformers' layout of our parameters, by their last name (`hf._to_hf_layout` on shapes alone).
_HF_SHAPE = {
    "kernel": lambda shape: shape[::-1],
    "weight_v": lambda shape: shape[::-1],
    "weight_g": lambda shape: (1, 1, *shape),
    "codevectors": lambda shape: (1, *shape),
}


def _abstract_shapes(name: str) -> tuple[dict, int]:
    """fairseq2's key -> shape of a preset's model, and its parameter count; nothing allocated.

    The model is built abstractly with one Transformer layer (cheap at any size) and its layer's
    shapes repeated: every layer of a preset has the same shapes, so shapes and count are exact."""
    preset = fairseq2.PRESETS[name]
    ctc = preset.family == "wav2vec2_asr"
    config = preset.config
    model = nnx.eval_shape(
        lambda: (Wav2Vec2ForCTC if ctc else Wav2Vec2ForPreTraining)(config.replace(num_hidden_layers=1))
    )
    one = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "masked_spec_embed" and ctc and config.mask_time_prob == 0:
            continue  # fairseq2 builds no masker for a CTC model that never masks
        key = fairseq2.hf_to_fairseq2_key(
            hf_keys(path)[0], norm=config.feat_extract_norm, pre_ln=config.do_stable_layer_norm, ctc=ctc
        )
        one[key] = _HF_SHAPE.get(path[-1], lambda shape: shape)(tuple(variable.shape))
    layer = {k.removeprefix("encoder.layers.0."): v for k, v in one.items() if k.startswith("encoder.layers.0.")}
    shapes = {k: v for k, v in one.items() if not k.startswith("encoder.layers.")}
    for i in range(config.num_hidden_layers):
        shapes |= {f"encoder.layers.{i}.{k}": v for k, v in layer.items()}
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    count += (config.num_hidden_layers - 1) * sum(int(np.prod(v)) for v in layer.values())
    return shapes, count


# The published sizes of Omnilingual's W2V models (= transformers' Wav2Vec2ForPreTraining of the
# same shapes): 300M is large_lv60k; `None`: no published figure to check.
PUBLISHED = {
    "large_lv60k": 317_390_592,
    "omnilingual_w2v_1b": 965_514_752,
    "omnilingual_w2v_3b": 3_064_124_672,
    "omnilingual_w2v_7b": 6_488_487_168,
}
# Presets sharing another's shapes, and the one detection names for them (the first listed of the
# same shapes and vocabulary size).
SHARED = {"base_100h": "base_10h", "large_100h": "large_10h", "large_lv60k_100h": "large_lv60k_10h"}


@pytest.mark.parametrize("name", list(fairseq2.PRESETS))
def test_every_preset_is_named_from_its_shapes(name):
    shapes, count = _abstract_shapes(name)
    assert fairseq2.detect_preset(shapes) == SHARED.get(name, name)
    if name in PUBLISHED:
        assert count == PUBLISHED[name]
    if fairseq2.PRESETS[name].family == "wav2vec2_asr":
        # Any vocabulary: a fine-tuned head of another size names the same encoder's preset.
        resized = shapes | {"final_proj.weight": (7, shapes["final_proj.weight"][1]), "final_proj.bias": (7,)}
        assert fairseq2.PRESETS[fairseq2.detect_preset(resized)].config.hidden_size == shapes["final_proj.weight"][1]


_WITHOUT_TORCH = """
import sys
for name in ("torch", "fairseq2"):
    sys.modules[name] = None  # any import of them fails
from w2v_jax.checkpoints.hf import hf_keys
from w2v_jax.checkpoints.loading import load_model
model = load_model(sys.argv[1])
print(type(model).__name__, model.config.num_hidden_layers)
"""


def test_reading_imports_neither_torch_nor_fairseq2(tmp_path, env):
    weights = fairseq_weights(FIELDS["large"], VOCAB)
    save_fairseq2_style(tmp_path / "in.pt", fairseq2_from_fairseq(weights, pre_ln=True, ctc=True))
    model = fairseq2.load_fairseq2_checkpoint(tmp_path / "in.pt", arch=_config("large", vocab_size=VOCAB)).model
    fairseq2.save_fairseq2_checkpoint(model, tmp_path / "ours.pt")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "ours.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Wav2Vec2ForCTC", str(FIELDS["large"]["encoder_layers"])]


def _protobuf(*fields: tuple[int, int, int | bytes]) -> bytes:
    """A protobuf message of (field number, wire type, value) fields: varints (0), bytes (2), 4-byte floats (5)."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    out = b""
    for number, wire, value in fields:
        out += varint(number << 3 | wire)
        if wire == 0:
            out += varint(value)
        elif wire == 2:
            out += varint(len(value)) + value
        else:
            out += int(value).to_bytes(4, "little")
    return out


# SentencePiece's ModelProto: pieces (field 1: piece 1, score 2, type 3; types NORMAL 1, UNKNOWN 2,
# CONTROL 3), then a trainer spec (field 2) the reader skips.
PIECES = [("<s>", 3), ("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("\u2581", 1), ("a", 1), ("é", 1), ("ß", 1)]


def test_a_sentencepiece_model_gives_the_ctc_vocabulary(tmp_path):
    pieces = [_protobuf((1, 2, p.encode()), (2, 5, 0), (3, 0, kind)) for p, kind in PIECES]
    data = b"".join(_protobuf((1, 2, piece)) for piece in pieces) + _protobuf((2, 2, _protobuf((3, 0, 8000))))
    (tmp_path / "tokenizer.model").write_bytes(data)
    vocabulary = fairseq2.read_sentencepiece_vocabulary(tmp_path / "tokenizer.model")
    assert vocabulary.tokens == tuple(p for p, _ in PIECES)
    assert (vocabulary.pad_id, vocabulary.unk_id) == (0, 3)  # the blank is id 0, as fairseq2's CTC loss has it
    assert vocabulary.decode([5, 5, 0, 5, 4, 6, 7]) == "aa éß"
    (tmp_path / "broken.model").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        fairseq2.read_sentencepiece_vocabulary(tmp_path / "broken.model")


def test_a_ctc_file_converts_with_its_tokenizer(tmp_path):
    pieces = [_protobuf((1, 2, p.encode()), (3, 0, kind)) for p, kind in PIECES]
    (tmp_path / "tokenizer.model").write_bytes(b"".join(_protobuf((1, 2, piece)) for piece in pieces))
    weights = fairseq_weights(FIELDS["base"], len(PIECES), seed=5)
    save_fairseq2_style(tmp_path / "ctc.pt", fairseq2_from_fairseq(weights, pre_ln=False, ctc=True))
    _config("base", vocab_size=len(PIECES)).to_json_file(tmp_path / "arch.json")
    arguments = [
        "fairseq2-to-jax",
        str(tmp_path / "ctc.pt"),
        str(tmp_path / "ours"),
        "--arch",
        str(tmp_path / "arch.json"),
    ]
    with pytest.raises(SystemExit, match="give its tokenizer's SentencePiece .model with --tokenizer"):
        run_main(convert_checkpoint, arguments)
    run_main(convert_checkpoint, [*arguments, "--tokenizer", str(tmp_path / "tokenizer.model")])
    model, vocabulary, normalize = load_ctc_checkpoint(tmp_path / "ours")
    assert vocabulary.tokens == tuple(p for p, _ in PIECES) and normalize
    assert model.config.vocab_size == len(PIECES)
    with pytest.raises(ValueError, match="fairseq2 file, which holds no vocabulary"):
        load_ctc_checkpoint(tmp_path / "ctc.pt")
