"""w2v_jax/asr/evaluator.py: validation inside fine-tuning keeps the best model."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.support.corpus import make_corpus
from tests.support.ctc import LAYER_CONFIG, VOCABULARY
from tests.support.launchers import run_main
from w2v_jax.asr import lm
from w2v_jax.asr.evaluator import CTCEvaluator, evaluate_finetuned_checkpoint
from w2v_jax.checkpoints.folder import load_checkpoint, save_checkpoint
from w2v_jax.checkpoints.hf import load_vocabulary
from w2v_jax.checkpoints.run_layout import BEST_MODEL_DIR, BEST_RECORD_FILE
from w2v_jax.cli import evaluate
from w2v_jax.data.manifest import read_manifest
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.training import train_step


def test_evaluator_keeps_the_best_model_and_replays_after_a_resume(tmp_path):
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(6000).astype(np.float32) for _ in range(3)]
    evaluator = CTCEvaluator(
        graphdef,
        LAYER_CONFIG,
        waveforms,
        ["ab", "c", "ab c"],
        VOCABULARY,
        "ltr",
        batch_size=2,
        workdir=tmp_path,
        best_metric="cer",
    )
    state = train_step.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=rest,
        opt_state=None,
        nonfinite_total=None,
        nonfinite_consecutive=None,
    )
    values = evaluator(state, 100)
    assert set(values) == {"wer", "cer"}
    best = json.loads((tmp_path / BEST_RECORD_FILE).read_text())
    assert best["step"] == 100 and best["value"] == values["cer"] and len(best["history"]) == 1
    assert load_vocabulary(tmp_path / BEST_MODEL_DIR) == VOCABULARY
    # A worse evaluation later keeps step 100; a resume replaying step 100 drops the later history.
    (tmp_path / BEST_RECORD_FILE).write_text(
        json.dumps({**best, "history": best["history"] + [{"step": 200, "wer": 2.0, "cer": 2.0}]})
    )
    evaluator(state, 100)
    assert [h["step"] for h in json.loads((tmp_path / BEST_RECORD_FILE).read_text())["history"]] == [100]
    with pytest.raises(ValueError, match="best_metric"):
        CTCEvaluator(
            graphdef,
            LAYER_CONFIG,
            waveforms,
            ["a"] * 3,
            VOCABULARY,
            "phn",
            batch_size=2,
            workdir=tmp_path,
            best_metric="cer",
        )


def _state_emitting(token: str) -> tuple:
    """A model whose every frame's argmax is `token` (its head's bias dominates), as a train state."""
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(0))
    bias = np.full(len(VOCABULARY), -100.0, np.float32)
    bias[VOCABULARY.token_to_id[token]] = 100.0
    model.lm_head.bias[...] = jnp.asarray(bias)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = train_step.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=rest,
        opt_state=None,
        nonfinite_total=None,
        nonfinite_consecutive=None,
    )
    return graphdef, state


def test_the_best_model_is_the_one_with_the_lowest_error_rate(tmp_path):
    """Evaluations at steps 100, 200, 300 whose transcripts are "b", "a" and "" against references
    "a": CER 1, 0, 1. The best is step 200's, and best/ holds its weights after the worse step 300."""
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(6000).astype(np.float32) for _ in range(2)]
    graphdef, _ = _state_emitting("a")
    evaluator = CTCEvaluator(
        graphdef,
        LAYER_CONFIG,
        waveforms,
        ["a", "a"],
        VOCABULARY,
        "ltr",
        batch_size=2,
        workdir=tmp_path,
        best_metric="cer",
    )
    rates = {}
    for step, token in ((100, "b"), (200, "a"), (300, VOCABULARY.pad_token)):
        rates[step] = evaluator(_state_emitting(token)[1], step)["cer"]
    assert rates == {100: 1.0, 200: 0.0, 300: 1.0}
    best = json.loads((tmp_path / BEST_RECORD_FILE).read_text())
    assert (best["step"], best["value"]) == (200, 0.0)
    kept = load_checkpoint(tmp_path / BEST_MODEL_DIR)[1]
    assert int(np.argmax(np.asarray(kept.lm_head.bias[...]))) == VOCABULARY.token_to_id["a"]


def test_evaluate_with_an_lm_scores_greedy_beam_and_every_pair_and_draws_the_sweep(tmp_path):
    """`evaluate --lm` on a CTC checkpoint: greedy, beam search without the LM (the best single
    alignment without an LM is the frame-wise argmax: greedy's rates) and the grid, its best pair."""
    manifest = make_corpus(tmp_path, per_language=2)
    words = ["abc", "bad", "cab", "fed", "bag"]
    rows = len(read_manifest(manifest))
    manifest.with_suffix(".wrd").write_text("".join(f"{words[i % 5]} {words[(i + 2) % 5]}\n" for i in range(rows)))
    text = tmp_path / "text.txt"
    text.write_text("abc cab\nbad fed bag\ncab abc fed\n")
    lm.build_lm([text], tmp_path / "lm.arpa", order=2)
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(1))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 100  # frame argmaxes that vary
    save_checkpoint(LAYER_CONFIG, model, tmp_path / "ctc", vocabulary=VOCABULARY)
    argv = [f"--checkpoint={tmp_path / 'ctc'}", f"--manifest={manifest}", f"--output={tmp_path / 'eval'}"]
    lm_flags = [f"--lm={tmp_path / 'lm.arpa'}", f"--lexicon={lm.lexicon_path(tmp_path / 'lm.arpa')}"]
    run_main(evaluate, [*argv, *lm_flags, "--lm_weight=0,2", "--word_score=-1,0,3"])
    record = json.loads((tmp_path / "eval" / "lm_metrics.json").read_text())
    decoders = record["decoders"]
    assert list(decoders)[:2] == ["greedy", "beam, no LM"] and len(decoders) == 2 + 6
    greedy = evaluate_finetuned_checkpoint(tmp_path / "ctc", manifest)
    assert {m: decoders["greedy"][m] for m in ("wer", "cer")} == {m: greedy[m] for m in ("wer", "cer")}
    assert {m: decoders["beam, no LM"][m] for m in ("wer", "cer")} == {m: greedy[m] for m in ("wer", "cer")}
    assert record["best"] == min(record["grid"], key=lambda g: (g["wer"], g["cer"], g["lm_weight"], g["word_score"]))
    for values in decoders.values():
        assert values["real_time_factor"] > 0 and values["utterances_per_second"] > 0
    assert (tmp_path / "eval" / "lm_sweep.png").stat().st_size > 1000
