"""w2v_jax.research.probes: log-mel and per-layer features, linear probes, the held-out-voice protocol, the
evaluation."""

import json

import librosa
import numpy as np
import pytest
from flax import nnx

from tests.support.corpus import make_corpus
from tests.support.ctc import CONFIG as CTC_CONFIG
from tests.support.ctc import VOCABULARY
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.utterances import Utterance, load_utterances
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.research import plotting, probes


@pytest.fixture(scope="module")
def model():
    return Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))


def test_log_mel_matches_numpy_oracle_on_the_model_frame_grid(model):
    waveform = np.random.RandomState(0).randn(5000).astype(np.float32)
    got = probes.log_mel_features(waveform)
    frames = (5000 - 400) // 320 + 1
    assert got.shape == (frames, 80) == (model.num_frames(5000), 80)
    window = np.hanning(401)[:-1]  # periodic Hann, as librosa's default
    power = np.stack([np.abs(np.fft.rfft(waveform[t * 320 : t * 320 + 400] * window)) ** 2 for t in range(frames)])
    mel = power @ librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).T
    np.testing.assert_allclose(got, np.log(mel + 1e-6), rtol=1e-4, atol=1e-4)


def test_model_features_are_every_layer_of_the_model_run_alone(model):
    """conv, the Transformer's input and each layer's output (num_hidden_layers + 2 sets), equal to the
    model's own outputs on each utterance alone; one set per kind otherwise."""
    rng = np.random.RandomState(1)
    waveforms = [rng.randn(n).astype(np.float32) for n in (4800, 6400)]
    layers = probes.model_features(model, waveforms)
    assert list(layers) == ["conv", "layer 0", "layer 1", "layer 2"]
    assert len(layers) == model.config.num_hidden_layers + 2
    run = nnx.jit(lambda m, x: m(x, output_hidden_states=True))
    for index, w in enumerate(waveforms):
        out = run(model, w[None])
        frames = model.num_frames(len(w))
        expected = [out.extract_features[0], *(h[0] for h in out.hidden_states)]
        for features, want in zip(layers.values(), expected):
            assert features[index].shape == (frames, want.shape[-1])
            # The same computation on the same input: measured identical; 1e-6 leaves XLA room to fuse differently.
            np.testing.assert_allclose(features[index], want, rtol=0, atol=1e-6)
    context = probes.model_features(model, waveforms[-1:], "context")["context"][0]
    np.testing.assert_allclose(context, out.last_hidden_state[0], rtol=0, atol=1e-6)
    projected = probes.model_features(model, waveforms[-1:], "projected")["projected"][0]
    np.testing.assert_allclose(projected, out.projected_states[0], rtol=0, atol=1e-6)
    assert list(probes.model_features(model, waveforms[:1], "conv")) == ["conv"]
    with pytest.raises(ValueError, match="feature kind"):
        probes.model_features(model, waveforms, "hidden")


def test_linear_probe_is_adam_on_cross_entropy_and_l2_as_a_numpy_oracle():
    rng = np.random.RandomState(3)
    x = rng.randn(50, 4).astype(np.float32) * [1, 2, 3, 4] + 1
    y = rng.randint(0, 3, 50)
    probe = probes.train_linear_probe(x, y, 3, steps=7, learning_rate=0.1, weight_decay=0.01)
    standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
    weights, bias = np.zeros((4, 3)), np.zeros(3)
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in (weights, bias)]
    for t in range(1, 8):
        logits = standard @ weights + bias
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        softmax /= softmax.sum(1, keepdims=True)
        residual = (softmax - np.eye(3)[y]) / len(y)
        grads = (standard.T @ residual + 2 * 0.01 * weights, residual.sum(0))
        updated = []
        for param, grad, (mu, nu) in zip((weights, bias), grads, moments):
            mu[:] = 0.9 * mu + 0.1 * grad
            nu[:] = 0.999 * nu + 0.001 * grad**2
            updated.append(param - 0.1 * (mu / (1 - 0.9**t)) / (np.sqrt(nu / (1 - 0.999**t)) + 1e-8))
        weights, bias = updated
    # float32 against float64 over 7 steps: measured 1.9e-6 (weights up to 0.56).
    np.testing.assert_allclose(probe.weights, weights, rtol=0, atol=6e-6)
    np.testing.assert_allclose(probe.bias, bias, rtol=0, atol=6e-6)
    np.testing.assert_allclose(probe.mean, x.mean(0), rtol=1e-6)


def test_linear_probe_separates_separable_data_and_not_noise():
    rng = np.random.RandomState(0)
    centres = rng.randn(4, 6) * 4
    y = rng.randint(0, 4, 800)
    x = centres[y] + rng.randn(800, 6) * 0.3
    probe = probes.train_linear_probe(x[:600], y[:600], 4, steps=200)
    assert probes.accuracy(probe, x[600:], y[600:]) == 1.0
    shuffled = rng.permutation(y)
    noise_probe = probes.train_linear_probe(x[:600], shuffled[:600], 4, steps=200)
    assert probes.accuracy(noise_probe, x[600:], shuffled[600:]) < 0.45  # chance is 0.25
    with pytest.raises(ValueError, match="labels"):
        probes.train_linear_probe(x, y + 1, 4)


def _utterance(path, voice, phonemes=("a", "b"), samples=3200):
    starts = np.linspace(0, samples, len(phonemes) + 1).astype(int)
    return Utterance(
        path=path,
        waveform=np.zeros(samples, np.float32),
        language="en",
        phonemes=tuple(phonemes),
        phoneme_starts=starts[:-1],
        phoneme_ends=starts[1:],
        voice=voice,
    )


def test_held_out_voices_split_by_speaker_across_languages_and_splits():
    train = [
        _utterance(f"t{i}", f"{lang}+{v}")
        for i, (lang, v) in enumerate(
            [("en", "m1"), ("fr", "m2"), ("de", "f1"), ("fr", "f4"), ("es", "m1"), ("en", "klatt")]
        )
    ]
    valid = [
        _utterance(f"v{i}", f"{lang}+{v}")
        for i, (lang, v) in enumerate([("it", "m2"), ("en", "m1"), ("de", "f1"), ("es", "f4")])
    ]
    sets = probes.HeldOutVoices().split(train, valid)
    assert sets.held_out_voices == ("f4", "m2")
    # Unseen voices: every utterance of f4 and m2, in any language, from both splits.
    assert [u.path for u in sets.unseen_voice] == ["t1", "t3", "v0", "v3"]
    # The probe trains on the other voices' train split and is tested on their valid split.
    assert [u.path for u in sets.train] == ["t0", "t2", "t4", "t5"]
    assert [u.path for u in sets.held_out_sentences] == ["v1", "v2"]
    seen = {u.speaker for u in sets.train + sets.held_out_sentences}
    assert seen.isdisjoint({u.speaker for u in sets.unseen_voice}) and seen == {"m1", "f1", "klatt"}
    capped = probes.HeldOutVoices(("klatt",)).split(train, valid, max_utterances=2)
    assert [u.path for u in capped.unseen_voice] == ["t5"] and [u.path for u in capped.train] == ["t0", "t1"]
    assert probes.HeldOutVoices(()).split(train, valid).unseen_voice == ()
    assert (
        sets.fingerprint()
        != capped.fingerprint()
        == probes.HeldOutVoices(("klatt",)).split(train, valid, max_utterances=2).fingerprint()
    )
    with pytest.raises(ValueError, match=r"held-out voices m9 \(voices in the data: f1, f4, klatt, m1, m2\)"):
        probes.HeldOutVoices(("m9",)).split(train, valid)
    with pytest.raises(ValueError, match="valid-split utterance of a seen voice"):
        probes.HeldOutVoices(("m1", "f1", "m2", "f4")).split(train, valid)


def test_the_embedded_corpus_default_protocol_has_several_languages_of_unseen_voices():
    train = load_utterances(default_manifest("train"))
    valid = load_utterances(default_manifest("valid"))
    assert {u.speaker for u in train} >= {"m1", "f1", "klatt", "klatt2"}
    sets = probes.HeldOutVoices().split(train, valid)
    assert len({u.language for u in sets.unseen_voice}) >= 4
    frames = sum(len(u.phonemes) for u in sets.unseen_voice)  # phonemes last several frames each
    assert frames > 500, frames
    assert {u.path for u in sets.held_out_sentences} <= {u.path for u in valid}
    assert {u.path for u in sets.train} <= {u.path for u in train}


def _aligned_utterances(seed, voices=("m1", "f1", "m2"), per_voice=4):
    """Utterances of 8 phonemes x 640 samples (2 frames each) and, per utterance, features whose
    frame t encodes the phoneme under its centre sample (t * 320 + 200)."""
    rng = np.random.RandomState(seed)
    phonemes = [f"p{k}" for k in range(5)]
    utterances, features = [], []
    for voice in voices:
        for _ in range(per_voice):
            labels = rng.randint(0, 5, 8)
            utterances.append(_utterance("x", f"en+{voice}", [phonemes[k] for k in labels], 8 * 640))
            frames = (8 * 640 - 400) // 320 + 1
            under = labels[(np.arange(frames) * 320 + 200) // 640]
            feats = 0.3 * rng.randn(frames, 9)
            feats[np.arange(frames), under] += 3.0
            features.append(feats)
    return utterances, features


def test_probe_finds_the_phones_where_they_are_known_and_not_in_scrambled_frames():
    # Features that encode each frame's phoneme: the probe is perfect on both test sets; shuffled
    # over frames, it is back near the majority class.
    train, train_features = _aligned_utterances(0)
    valid, valid_features = _aligned_utterances(1)
    sets = probes.HeldOutVoices(("m2",)).split(train, valid)
    by_path = {id(u): f for u, f in zip(train + valid, train_features + valid_features)}
    ordered = [by_path[id(u)] for u in (*sets.train, *sets.unseen_voice, *sets.held_out_sentences)]
    rng = np.random.RandomState(2)
    scrambled = [f[rng.permutation(len(f))] for f in ordered]
    report = probes.probe_feature_sets(
        sets, [("known", "layer 0", ordered), ("known", "layer 1", scrambled)], steps=200
    )
    known, noise = report.rows("known")
    assert known.unseen_voice == 1.0 and known.held_out_sentences == 1.0
    assert noise.unseen_voice < 0.5 and noise.held_out_sentences < 0.5  # 5 classes: ~0.2-0.3
    assert report.best("known") == known and report.num_classes == 5
    # m2's 8 utterances (4 per split) and the seen voices' 8 valid ones, 15 frames each.
    assert report.num_frames == {"train": 8 * 15, "unseen_voice": 8 * 15, "held_out_sentences": 8 * 15}
    assert 0.1 < report.majority["unseen_voice"] < 0.5
    assert probes.PhoneProbeReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    with pytest.raises(ValueError, match="3 feature arrays for 24 utterances"):
        probes.probe_feature_sets(sets, [("known", "conv", ordered[:3])])


def test_evaluate_reports_every_layer_beside_random_init_and_log_mel(model, tmp_path):
    manifest = make_corpus(tmp_path)
    utterances = load_utterances(manifest, crop_multiple=3200)
    assert [len(u.waveform) % 3200 for u in utterances] == [0] * 6
    assert {u.language for u in utterances} == {"en", "fr"} and len(utterances[0].phonemes) == 8
    assert [u.speaker for u in utterances] == ["f1", "m1", "m2"] * 2
    metrics, report = probes.evaluate(
        model, utterances, utterances, protocol=probes.HeldOutVoices(("m2",)), probe_steps=50
    )
    layers = ["conv", "layer 0", "layer 1", "layer 2"]
    assert [(r.features, r.layer) for r in report.results] == [
        *(("checkpoint", layer) for layer in layers),
        *(("random init", layer) for layer in layers),
        ("log-mel (80)", ""),
    ]
    assert report.num_classes == 6 and report.held_out_voices == ("m2",)
    table = report.table()
    assert table.count("\n| ") == len(report.results) + 1  # the rows and the majority class
    assert "| majority class |" in table and "unseen voices (m2)" in table
    best = report.best("checkpoint")
    assert f"| checkpoint | {best.layer} | **{best.unseen_voice:.3f}** |" in table
    assert f"checkpoint: {best.layer}, {best.unseen_voice:.3f}" in table
    assert metrics.num_masked > 0
    plotting.plot_phone_probe(report, tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 10_000


def test_evaluating_a_checkpoint_refuses_a_fine_tuned_model(tmp_path):
    save_checkpoint(CTC_CONFIG, Wav2Vec2ForCTC(CTC_CONFIG, rngs=nnx.Rngs(0)), tmp_path / "ctc", vocabulary=VOCABULARY)
    with pytest.raises(ValueError, match="holds a Wav2Vec2ForCTC: the validation objective and the codebook need"):
        probes.evaluate_pretrained_checkpoint(tmp_path / "ctc", output=tmp_path / "eval")
