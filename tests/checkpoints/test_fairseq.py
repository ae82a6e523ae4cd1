"""fairseq checkpoints: import against transformers' model, export, round trips.

fairseq does not install here, so the checkpoints are built in fairseq's structure: keys and shapes
from `fairseq/models/wav2vec/wav2vec2.py` and `wav2vec2_asr.py`, configs with the fields of the
public checkpoints' configs (torchaudio's test assets) scaled down, saved with `torch.save` as
fairseq's trainer does (`args` Namespace or hydra `cfg`). The same weights go into transformers'
model through transformers' converter's own mapping (`_transformers_state_dict`, written from
`convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py`), the reference our import must match.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from tests.support import HANG_TIMEOUT
from tests.support.fairseq import PUBLIC_MODELS, fairseq_weights, save_fairseq_style, transformers_state_dict
from tests.support.launchers import run_main
from tests.support.parity import relative_error
from w2v_jax.asr.task import FineTuningTask
from w2v_jax.checkpoints import fairseq
from w2v_jax.checkpoints.folder import load_checkpoint
from w2v_jax.checkpoints.loading import input_normalization, load_ctc_checkpoint, load_model
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import finetune as finetune_configs
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

# Scaled-down fields of the public configs: wav2vec_small.pt (BASE: group norm, post-LN, no conv
# bias, final_dim 256) and libri960_big.pt / wav2vec_vox_new.pt (LARGE: layer norm, pre-LN, conv
# bias, final_dim 768, latent_dim 0 -> final_dim).
CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2"
BASE = dict(
    _name="wav2vec2",
    extractor_mode="default",
    encoder_layers=2,
    encoder_embed_dim=24,
    encoder_ffn_embed_dim=40,
    encoder_attention_heads=2,
    activation_fn="gelu",
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    encoder_layerdrop=0.05,
    dropout_input=0.1,
    dropout_features=0.1,
    final_dim=12,
    layer_norm_first=False,
    conv_feature_layers=CONV,
    conv_bias=False,
    logit_temp=0.1,
    quantize_targets=True,
    quantize_input=False,
    feature_grad_mult=0.1,
    latent_vars=7,
    latent_groups=2,
    latent_dim=0,
    mask_length=10,
    mask_prob=0.65,
    mask_selection="static",
    num_negatives=100,
    cross_sample_negatives=0,
    conv_pos=8,
    conv_pos_groups=4,
    latent_temp=[2.0, 0.5, 0.999995],
)
LARGE = dict(
    BASE,
    extractor_mode="layer_norm",
    encoder_layers=3,
    encoder_embed_dim=30,
    encoder_ffn_embed_dim=50,
    encoder_attention_heads=3,
    layer_norm_first=True,
    conv_bias=True,
    final_dim=15,
    latent_groups=3,
    latent_vars=5,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
    encoder_layerdrop=0.0,
    feature_grad_mult=1.0,
    conv_pos=5,
    conv_pos_groups=3,
)
# transformers' fields each must give (the reference model's config).
EXPECTED = {
    "base": dict(
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        num_codevector_groups=2,
        num_codevectors_per_group=7,
        codevector_dim=12,
        proj_codevector_dim=12,
        conv_dim=[32] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
    ),
}
EXPECTED["large"] = dict(
    EXPECTED["base"],
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    conv_bias=True,
    hidden_size=30,
    num_hidden_layers=3,
    num_attention_heads=3,
    intermediate_size=50,
    num_conv_pos_embeddings=5,
    num_conv_pos_embedding_groups=3,
    num_codevector_groups=3,
    num_codevectors_per_group=5,
    codevector_dim=15,
    proj_codevector_dim=15,
)
FIELDS = {"base": BASE, "large": LARGE}
LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H", "S"]


def _reference(kind: str, weights: dict, vocab_size: int | None) -> torch.nn.Module:
    config = transformers.Wav2Vec2Config(**EXPECTED[kind], vocab_size=vocab_size or 32, mask_time_prob=0.05)
    cls = transformers.Wav2Vec2ForCTC if vocab_size else transformers.Wav2Vec2ForPreTraining
    model = cls(config).eval()
    state = transformers_state_dict(weights, EXPECTED[kind]["feat_extract_norm"] == "group")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("masked_spec_embed" in k for k in missing), missing  # transformers' CTC model may lack it
    return model


def _audio(seed=0, samples=4000):
    return np.random.default_rng(seed).standard_normal((1, samples)).astype(np.float32)


# Worst relative error measured: 1.6e-6 (hidden states, logits, targets); 1e-5 (the issue's) is 6 times that.
TOLERANCE = 1e-5


@pytest.mark.parametrize(("kind", "style"), [("base", "args"), ("large", "cfg")])
def test_pretraining_checkpoint_matches_transformers_through_its_converters_mapping(kind, style, tmp_path):
    fields = FIELDS[kind]
    weights = fairseq_weights(fields, None)
    save_fairseq_style(tmp_path / "checkpoint.pt", weights, fields, style)
    imported = fairseq.load_fairseq_checkpoint(tmp_path / "checkpoint.pt")
    hf_fields = imported.config.to_hf_dict()
    assert {k: hf_fields[k] for k in EXPECTED[kind]} == EXPECTED[kind]
    assert imported.config.feature_penalty_weight == 10.0 and imported.config.diversity_loss_weight == 0.1
    assert imported.config_style == style and imported.parameters == len(weights)
    assert imported.skipped_entries == ("extra_state", "last_optimizer_state", "optimizer_history")
    assert isinstance(imported.model, Wav2Vec2ForPreTraining)

    reference = _reference(kind, weights, None)
    audio = _audio()
    with torch.no_grad():
        expected = reference(torch.from_numpy(audio), output_hidden_states=True)
    ours = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(imported.model, audio)
    assert len(ours.hidden_states) == len(expected.hidden_states) == fields["encoder_layers"] + 1
    for mine, theirs in zip(ours.hidden_states, expected.hidden_states):
        assert relative_error(mine, theirs.numpy()) < TOLERANCE
    assert relative_error(ours.projected_states, expected.projected_states.numpy()) < TOLERANCE
    # Quantized targets: the same codewords picked on every frame, and the same projected targets.
    assert relative_error(ours.projected_quantized_states, expected.projected_quantized_states.numpy()) < TOLERANCE


@pytest.mark.parametrize(("kind", "style"), [("base", "cfg"), ("large", "args")])
def test_ctc_checkpoint_with_its_dictionary_matches_transformers(kind, style, tmp_path):
    fields = FIELDS[kind]
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(LETTERS)))
    weights = fairseq_weights(fields, 4 + len(LETTERS), seed=1)
    # A 2020 fine-tuned checkpoint may still hold the quantizer: skipped, and reported.
    weights["w2v_encoder.w2v_model.quantizer.vars"] = torch.zeros(1, 4, 3)
    save_fairseq_style(tmp_path / "ctc.pt", weights, fields, style, ctc=True)
    imported = fairseq.load_fairseq_checkpoint(tmp_path / "ctc.pt")
    assert isinstance(imported.model, Wav2Vec2ForCTC) and imported.config_style == style
    assert imported.skipped_parameters == ("w2v_encoder.w2v_model.quantizer.vars",)
    config = imported.config
    # The fine-tuning config's overrides of the pretraining fields.
    assert (config.mask_time_prob, config.mask_feature_prob, config.mask_feature_length) == (0.5, 0.25, 64)
    assert (config.layerdrop, config.final_dropout, config.ctc_zero_infinity) == (0.1, 0.1, True)
    assert imported.normalize == (kind == "large")
    # fairseq's ids kept: its blank `<s>` (id 0) is our and transformers' `<pad>`, the letters follow.
    assert imported.vocabulary.tokens == ("<pad>", "<s>", "</s>", "<unk>", *LETTERS)
    assert imported.vocabulary.pad_id == config.pad_token_id == 0

    reference = _reference(kind, {k: v for k, v in weights.items() if "quantizer" not in k}, config.vocab_size)
    assert_ctc_outputs_match(imported.model, reference)


def assert_ctc_outputs_match(model, reference):
    """Our CTC model's logits and hidden states against transformers' `reference` (the same weights)
    on the same audio, each within TOLERANCE."""
    audio = _audio(1)
    with torch.no_grad():
        expected = reference(torch.from_numpy(audio), output_hidden_states=True)
    ours = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, audio)
    assert relative_error(ours.logits, expected.logits.numpy()) < TOLERANCE
    for mine, theirs in zip(ours.hidden_states, expected.hidden_states, strict=True):
        assert relative_error(mine, theirs.numpy()) < TOLERANCE


@pytest.mark.parametrize(("kind", "ctc"), [("base", False), ("large", True)])
def test_round_trip_fairseq_ours_fairseq_is_bit_exact(kind, ctc, tmp_path):
    fields = FIELDS[kind]
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    weights = fairseq_weights(fields, 4 + len(LETTERS) if ctc else None, seed=2)
    save_fairseq_style(tmp_path / "in.pt", weights, fields, "cfg", ctc=ctc)
    run_main(convert_checkpoint, ["fairseq-to-jax", str(tmp_path / "in.pt"), str(tmp_path / "ours")])
    run_main(convert_checkpoint, ["jax-to-fairseq", str(tmp_path / "ours"), str(tmp_path / "out" / "back.pt")])
    back = torch.load(tmp_path / "out" / "back.pt", weights_only=True)  # plain dicts and tensors only
    assert back["model"].keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(back["model"][key], value), key
    assert "optimizer" not in back and back["last_optimizer_state"] is None
    cfg = back["cfg"]
    # task.normalize survives the trip: BASE was trained on raw audio, LARGE on normalised audio.
    assert cfg["task"]["normalize"] is (fields["extractor_mode"] == "layer_norm")
    model_fields = cfg["model"]["w2v_args"]["model"] if ctc else cfg["model"]
    assert cfg["model"]["_name"] == ("wav2vec_ctc" if ctc else "wav2vec2")
    for name in ("extractor_mode", "layer_norm_first", "conv_bias", "encoder_layers", "final_dim", "latent_vars"):
        assert model_fields[name] == fields[name], name
    if ctc:
        assert (tmp_path / "out" / "dict.ltr.txt").read_text() == "".join(f"{s} 1\n" for s in LETTERS)
        assert cfg["task"]["data"] == str((tmp_path / "out").resolve()) and cfg["task"]["labels"] == "ltr"
    # Our reader reads the export back to the same model.
    again = fairseq.load_fairseq_checkpoint(tmp_path / "out" / "back.pt")
    first = load_model(tmp_path / "in.pt")
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(first, nnx.Param)), nnx.to_flat_state(nnx.state(again.model, nnx.Param))
    ):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))


def test_ctc_folder_keeps_the_vocabulary_and_normalisation(tmp_path, capsys):
    (tmp_path / "letters.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    weights = fairseq_weights(BASE, 4 + len(LETTERS), seed=3)
    save_fairseq_style(tmp_path / "ctc.pt", weights, BASE, "cfg", ctc=True, extra=False)
    run_main(
        convert_checkpoint,
        ["fairseq-to-jax", str(tmp_path / "ctc.pt"), str(tmp_path / "ours"), "--dict", str(tmp_path / "letters.txt")],
    )
    printed = capsys.readouterr().out
    assert f"read Wav2Vec2ForCTC from the 'cfg' config: {len(weights)} tensors mapped" in printed
    assert "skipped checkpoint entries: none" in printed
    config, model = load_checkpoint(tmp_path / "ours")
    assert isinstance(model, Wav2Vec2ForCTC)
    assert Vocabulary.load(tmp_path / "ours").tokens == ("<pad>", "<s>", "</s>", "<unk>", *LETTERS)
    # BASE was fine-tuned on unnormalised audio (task.normalize False): the processor says so.
    assert '"do_normalize": false' in (tmp_path / "ours" / "preprocessor_config.json").read_text()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("layer_type", "conformer"),
        ("negatives_from_everywhere", True),
        ("quantize_input", True),
        ("adp_num", 2),
        ("pos_conv_depth", 5),
    ],
)
def test_unsupported_fields_are_refused_by_name(field, value, tmp_path):
    fields = BASE | {field: value}
    save_fairseq_style(tmp_path / "x.pt", fairseq_weights(BASE, None), fields, "cfg", extra=False)
    with pytest.raises(ValueError, match=rf"{field}={value!r} .*not supported"):
        fairseq.load_fairseq_checkpoint(tmp_path / "x.pt")


def test_other_fairseq_models_and_unknown_keys_are_refused(tmp_path):
    save_fairseq_style(
        tmp_path / "hubert.pt", fairseq_weights(BASE, None), BASE | {"_name": "hubert"}, "cfg", extra=False
    )
    with pytest.raises(ValueError, match="fairseq model 'hubert' is not supported"):
        fairseq.load_fairseq_checkpoint(tmp_path / "hubert.pt")
    weights = fairseq_weights(BASE, None) | {"encoder.layers.0.adapter.weight": torch.ones(2)}
    save_fairseq_style(tmp_path / "extra.pt", weights, BASE, "cfg", extra=False)
    with pytest.raises(ValueError, match=r"no place in the model: \['encoder.layers.0.adapter.weight'\]"):
        fairseq.load_fairseq_checkpoint(tmp_path / "extra.pt")


def test_key_mapping_both_ways():
    for norm, conv_norm in (
        ("group", "feature_extractor.conv_layers.0.2.weight"),
        ("layer", "feature_extractor.conv_layers.3.2.1.bias"),
    ):
        for key in (
            conv_norm,
            "encoder.pos_conv.0.weight_g",
            "encoder.layers.11.fc2.bias",
            "mask_emb",
            "final_proj.weight",
        ):
            hf_key = fairseq.fairseq_to_hf_key(key, norm)
            assert fairseq.hf_to_fairseq_key(hf_key, norm, ctc=False) == key
    assert (
        fairseq.fairseq_to_hf_key("w2v_encoder.w2v_model.encoder.layer_norm.bias", "layer")
        == "wav2vec2.encoder.layer_norm.bias"
    )
    assert fairseq.fairseq_to_hf_key("layer_norm.weight", "group") == "wav2vec2.feature_projection.layer_norm.weight"
    assert fairseq.fairseq_to_hf_key("w2v_encoder.proj.weight", "group") == "lm_head.weight"
    assert fairseq.hf_to_fairseq_key("lm_head.bias", "group", ctc=True) == "w2v_encoder.proj.bias"
    assert (
        fairseq.hf_to_fairseq_key("wav2vec2.masked_spec_embed", "group", ctc=True) == "w2v_encoder.w2v_model.mask_emb"
    )


def test_export_refuses_a_vocabulary_fairseq_cannot_number(tmp_path):
    weights = fairseq_weights(BASE, 4 + len(LETTERS))
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    save_fairseq_style(tmp_path / "ctc.pt", weights, BASE, "cfg", ctc=True, extra=False)
    model = fairseq.load_fairseq_checkpoint(tmp_path / "ctc.pt").model
    shuffled = Vocabulary(("<s>", "<pad>", "</s>", "<unk>", *LETTERS))
    with pytest.raises(ValueError, match="starts with its specials"):
        fairseq.save_fairseq_checkpoint(model, tmp_path / "out.pt", vocabulary=shuffled)


ARCHITECTURE = (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "do_stable_layer_norm",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "num_codevector_groups",
    "num_codevectors_per_group",
    "codevector_dim",
    "proj_codevector_dim",
)


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("wav2vec_small", Wav2Vec2Config.preset("base")),
        (
            "libri960_big",
            Wav2Vec2Config.preset("large", feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
        ),
        ("wav2vec_vox_new / xlsr_53_56k / xlsr_300m", Wav2Vec2Config.preset("large")),
    ],
)
def test_public_checkpoint_configs_map_to_their_architecture(name, preset):
    state = {
        "cfg": {"model": PUBLIC_MODELS[name], "task": {"normalize": True}, "criterion": {"loss_weights": [0.1, 10]}}
    }
    _, model, criterion, _, finetuning = fairseq._sections(state)
    config = fairseq._config_from_fields(model, criterion, finetuning, 32)
    assert {f: getattr(config, f) for f in ARCHITECTURE} == {f: getattr(preset, f) for f in ARCHITECTURE}


def test_public_fine_tuned_config_overrides_its_pretraining_fields():
    # wav2vec_small_960h.json: the fine-tuning fields around the pretraining model in w2v_args.
    finetuned = dict(
        _name="wav2vec_ctc",
        activation_dropout=0.1,
        apply_mask=True,
        attention_dropout=0.0,
        blank_mode="add",
        blank_weight=0.0,
        dropout=0.0,
        dropout_input=0.0,
        feature_grad_mult=0.0,
        final_dropout=0.0,
        layerdrop=0.1,
        mask_channel_length=64,
        mask_channel_prob=0.1,
        mask_length=10,
        mask_prob=0.5,
        normalize=False,
        w2v_args={"model": PUBLIC_MODELS["wav2vec_small"], "task": {"_name": "audio_pretraining", "normalize": False}},
        w2v_path="???",
    )
    _, model, criterion, _, finetuning = fairseq._sections({"cfg": {"model": finetuned, "task": {"normalize": False}}})
    config = fairseq._config_from_fields(model, criterion, finetuning, 32)
    base = Wav2Vec2Config.preset("base")
    assert {f: getattr(config, f) for f in ARCHITECTURE} == {f: getattr(base, f) for f in ARCHITECTURE}
    assert (config.mask_time_prob, config.mask_feature_prob, config.mask_feature_length) == (0.5, 0.1, 64)
    assert (config.feature_grad_mult, config.layerdrop, config.hidden_dropout, config.activation_dropout) == (
        0.0,
        0.1,
        0.0,
        0.1,
    )


def test_a_fine_tuned_pt_file_loads_as_a_ctc_checkpoint_with_its_vocabulary(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    save_fairseq_style(
        tmp_path / "ctc.pt", fairseq_weights(LARGE, 4 + len(LETTERS)), LARGE, "cfg", ctc=True, extra=False
    )
    model, vocabulary, normalize = load_ctc_checkpoint(tmp_path / "ctc.pt")
    assert isinstance(model, Wav2Vec2ForCTC) and len(vocabulary) == model.config.vocab_size
    assert normalize  # LARGE was fine-tuned on normalised audio (task.normalize)
    (tmp_path / "dict.ltr.txt").unlink()
    with pytest.raises(ValueError, match="no dict.ltr.txt beside it"):
        load_ctc_checkpoint(tmp_path / "ctc.pt")


_WITHOUT_TORCH = """
import sys
for name in ("torch", "fairseq", "omegaconf", "hydra"):
    sys.modules[name] = None  # any import of them fails
from w2v_jax.checkpoints.fairseq import load_fairseq_checkpoint
imported = load_fairseq_checkpoint(sys.argv[1])
print(type(imported.model).__name__, imported.parameters, len(imported.vocabulary))
"""


def test_reading_imports_neither_torch_nor_fairseq_nor_omegaconf(tmp_path, env):
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    weights = fairseq_weights(BASE, 4 + len(LETTERS))
    save_fairseq_style(tmp_path / "ctc.pt", weights, BASE, "cfg", ctc=True)  # a pickled DictConfig
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "ctc.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Wav2Vec2ForCTC", str(len(weights)), str(4 + len(LETTERS))]


@pytest.mark.parametrize("init", ["pt", "folder"])
def test_fine_tuning_from_a_raw_audio_checkpoint_feeds_it_raw_audio(init, tmp_path, caplog):
    """wav2vec_small.pt was pretrained on unnormalised audio (`task.normalize` False): fine-tuning
    from it, or from its import to our folder, feeds the pipeline's batches raw (whatever
    `data.normalize` says, with a warning), and the fine-tuned model's processor files say so."""
    save_fairseq_style(tmp_path / "small.pt", fairseq_weights(BASE, None, seed=5), BASE, "cfg")
    source = tmp_path / "small.pt"
    if init == "folder":
        run_main(convert_checkpoint, ["fairseq-to-jax", str(source), str(tmp_path / "small")])
        source = tmp_path / "small"
    config = finetune_configs.get_config("tiny")
    config.init = str(source)
    task = FineTuningTask()
    with caplog.at_level("WARNING", logger="w2v_jax.asr.task"):
        task.prepare(config, tmp_path / "ft", primary=True)
    assert task.normalize is False and config.data.normalize is True
    assert "pretrained on raw (unnormalised) audio: fine-tuning feeds it the same" in caplog.text
    assert input_normalization(tmp_path / "ft") is False
    batch = next(iter(task.data_iterator(config, batch_size=2, shard_index=0, shard_count=1)))
    for row, mask in zip(batch["input_values"], batch["attention_mask"]):
        real = row[mask.astype(bool)]
        # Normalised rows have unit variance (to 1e-3); the corpus's raw speech is far quieter.
        assert abs(float(real.std()) - 1) > 0.3
