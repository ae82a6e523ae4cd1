"""experiments.evaluate (`research.probes.evaluate_pretrained_checkpoint`) and experiments.plot_representations end to
end on a small generated corpus."""

import json

import pytest
from flax import nnx

from tests.support.corpus import make_corpus
from tests.support.launchers import run
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    config = Wav2Vec2Config.preset("tiny")
    save_checkpoint(config, Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(3)), folder)
    return folder


@pytest.mark.slow
def test_evaluate_writes_metrics_phone_probe_per_layer_and_histogram(checkpoint, env, tmp_path):
    manifest = make_corpus(tmp_path)  # voices f1, m1, m2 in each language
    out = tmp_path / "eval"
    result = run(
        "experiments.evaluate",
        [
            f"--checkpoint={checkpoint}",
            f"--manifest={manifest}",
            f"--probe_train_manifest={manifest}",
            f"--output={out}",
            "--held_out_voices=m2",
            "--probe_steps=50",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    validation = record["validation"]
    assert 0.2 <= validation["chance_accuracy"] <= 1 and validation["num_masked"] > 0
    assert sum(record["codebook_usage"][0]) == sum(record["codebook_usage"][1]) > 0
    probe = record["phone_probe"]
    assert probe["held_out_voices"] == ["m2"] and probe["num_frames"]["unseen_voice"] > 0
    layers = ["conv", "layer 0", "layer 1", "layer 2"]  # tiny: conv, the Transformer's input, 2 layers
    assert [(r["features"], r["layer"]) for r in probe["results"]] == [
        *((checkpoint.name, layer) for layer in layers),
        *(("random init", layer) for layer in layers),
        ("log-mel (80)", ""),
    ]
    assert probe["best"][checkpoint.name]["layer"] in layers
    table = (out / "probes.md").read_text()
    assert "| majority class |" in table and "Best layer for phones" in table
    for name in ("phone_probe.png", "codebook_usage.png"):
        assert (out / name).stat().st_size > 0
    assert "unseen voices (m2)" in result.stdout


@pytest.mark.slow
def test_plot_representations_draws_any_checkpoint(checkpoint, env, tmp_path):
    manifest = make_corpus(tmp_path, languages=("en",), per_language=1)
    out = tmp_path / "reps.png"
    result = run(
        "experiments.plot_representations",
        [f"--checkpoint={checkpoint}", f"--audio={manifest.parent / 'en_0.flac'}", f"--out={out}"],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 10_000
