"""The fine-tuning launcher end to end on the tiny config and the embedded corpus: outputs, validation
and the best model, exact resume, transcription, export to transformers' ASR pipeline.

Runs are subprocesses of `python -m experiments.finetune` (1 device) sharing a JAX persistent
compilation cache, so only the first one compiles.
"""

import json
import shutil

import numpy as np
import pytest
import transformers
from flax import nnx

from tests.support.finetuned import NUM_STEPS, OVERRIDES, reference_run, run
from w2v_jax.asr.error_rates import error_rate_metrics
from w2v_jax.asr.transcription import read_inputs, transcribe_files
from w2v_jax.checkpoints import load_model
from w2v_jax.checkpoints.run_layout import BEST_MODEL_DIR, BEST_RECORD_FILE, MODEL_CONFIG_FILE
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import load_audio
from w2v_jax.data.labels import label_path, letters_to_words
from w2v_jax.data.manifest import read_manifest, write_manifest
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.training import metrics

TIMING = {"audio_seconds_per_second", "steps_per_second"}


def records(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read_metrics(workdir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(session_dir, env):
    """The run of `OVERRIDES`, once per session (`shared_run`): its workdir, which tests only read."""
    return reference_run(session_dir, env)


def test_launcher_writes_every_output(reference):
    for name in (
        "config.json",
        MODEL_CONFIG_FILE,
        "vocab.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "metrics.jsonl",
        "loss_curve.png",
        BEST_RECORD_FILE,
        f"{BEST_MODEL_DIR}/params.safetensors",
        f"{BEST_MODEL_DIR}/vocab.json",
    ):
        assert (reference / name).is_file(), name
    logged = records(reference)
    assert [r["step"] for r in logged] == [10, 20, 30, 40]
    assert all(np.isfinite(r["loss"]) for r in logged)
    # Training leaves the initial (uniform) stage: the loss per label falls well below its start.
    assert logged[-1]["loss_per_token"] < 0.6 * logged[0]["loss_per_token"]
    evaluated = [r for r in logged if "valid_cer" in r]
    assert [r["step"] for r in evaluated] == [20, 40]
    assert all(0.0 <= r["valid_cer"] and 0.0 <= r["valid_wer"] for r in evaluated)
    best = json.loads((reference / BEST_RECORD_FILE).read_text())
    assert best["metric"] == "cer" and best["value"] == min(r["valid_cer"] for r in evaluated)
    assert [h["step"] for h in best["history"]] == [20, 40]
    assert isinstance(load_model(reference), Wav2Vec2ForCTC)


def test_resume_mid_run_logs_and_ends_as_an_uninterrupted_run(reference, env, tmp_path):
    """The reference run with its last checkpoint removed resumes from step 30 (after the validation at 20,
    before the one at 40) and ends identical."""
    workdir = tmp_path / "resumed"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(NUM_STEPS))
    (workdir / "lock").unlink(missing_ok=True)
    run("experiments.finetune", [f"--workdir={workdir}", *OVERRIDES], env)
    assert records(workdir) == records(reference)
    resumed, uninterrupted = load_model(workdir, NUM_STEPS), load_model(reference, NUM_STEPS)
    for (path, a), (_, b) in zip(*(nnx_flat(m) for m in (resumed, uninterrupted))):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert json.loads((workdir / BEST_RECORD_FILE).read_text()) == json.loads(
        (reference / BEST_RECORD_FILE).read_text()
    )


def nnx_flat(model):

    return [(p, np.asarray(v[...])) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def test_transcribe_launcher_prints_the_best_models_transcripts(reference, env, tmp_path):
    manifest = read_manifest(default_manifest("valid"))
    files = [str(manifest.file_path(i)) for i in range(3)]
    out = run("experiments.transcribe", [f"--checkpoint={reference}", *files], env).stdout
    expected = transcribe_files(reference, files)
    assert out.rstrip("\n").split("\n") == [f"{path}\t{text}" for path, text in expected]
    # A manifest stands for all its rows.
    assert read_inputs([default_manifest("valid")]) == [manifest.file_path(i) for i in range(len(manifest))]
    with pytest.raises(ValueError, match="no such audio file or manifest"):
        read_inputs([tmp_path / "missing.flac"])


def test_export_then_transformers_pipeline_gives_our_transcripts(reference, env, tmp_path):
    run("experiments.convert_checkpoint", ["jax-to-hf", str(reference), str(tmp_path / "hf")], env)
    asr = transformers.pipeline("automatic-speech-recognition", model=str(tmp_path / "hf"), device="cpu")
    manifest = read_manifest(default_manifest("valid"))
    files = [manifest.file_path(i) for i in range(4)]
    ours = dict(transcribe_files(reference, files))
    for path in files:
        raw = load_audio(path, normalize_audio=False)
        assert asr({"raw": raw, "sampling_rate": 16_000})["text"] == ours[path]


def test_evaluate_launcher_reports_error_rates_of_the_best_model(reference, env, tmp_path):
    """On a 3-row labelled manifest: WER and CER of the transcripts against the normalised references."""
    source = default_manifest("valid")
    manifest = read_manifest(source)
    write_manifest(tmp_path / "small.tsv", manifest.root, manifest.paths[:3], manifest.num_samples[:3])
    letters = label_path(source, "ltr").read_text(encoding="utf-8").split("\n")[:3]
    label_path(tmp_path / "small.tsv", "ltr").write_text("".join(f"{line}\n" for line in letters), encoding="utf-8")
    run(
        "experiments.evaluate",
        [f"--checkpoint={reference}", f"--manifest={tmp_path / 'small.tsv'}", f"--output={tmp_path / 'eval'}"],
        env,
    )
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    hypotheses = [text for _, text in transcribe_files(reference, [tmp_path / "small.tsv"])]
    references = [letters_to_words(line.split()) for line in letters]
    assert {k: record[k] for k in ("wer", "cer")} == error_rate_metrics(references, hypotheses, "ltr")
    assert record["num_utterances"] == 3


@pytest.mark.slow
def test_pretrained_tiny_leaves_the_all_blank_plateau_and_valid_cer_falls(tiny_pretraining, long_run_env, tmp_path):
    """The tiny fine-tuning config with its defaults from the main command's 300-update tiny pretraining:
    the head learns alone for 100 updates, then the whole model trains, and CTC leaves its all-blank
    plateau (the loss per label of predicting the letter frequencies
    without the audio: 2.94 nats on this corpus)."""
    workdir = tmp_path / "run"
    run(
        "experiments.finetune",
        [
            f"--workdir={workdir}",
            "--config=experiments/configs/finetune.py:tiny",
            f"--config.init={tiny_pretraining}",
            "--config.train.plot=False",
        ],
        long_run_env,
    )
    logged = metrics.read_metrics(workdir / "metrics.jsonl")
    cer = {r["step"]: r["valid_cer"] for r in logged if "valid_cer" in r}
    assert sorted(cer) == [50, 100, 150, 200, 250, 300]
    # Measured: loss per label 2.32 over updates 281-300; valid CER 0.697 at update 50 (the head
    # alone emits frequent letters), 0.637 at 300. Bounds: the loss halfway between the plateau and
    # the measured value; the CER at least half the measured fall below its first value.
    assert logged[-1]["loss_per_token"] < 2.6, [r["loss_per_token"] for r in logged]
    assert cer[300] < cer[50] - 0.03, cer
