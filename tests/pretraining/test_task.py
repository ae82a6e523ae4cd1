"""w2v_jax/pretraining/task.py: the failure detectors that watch a pretraining run (codebook collapse,
a trivial solution, and the loop's own) on synthetic metric streams. The task's run through the loop:
tests/training/test_trainer.py; its window reductions: tests/training/test_metrics.py."""

import pytest

from tests.support.health import GENERIC_CASES, check_fires_after_its_window, healthy_stream, observe
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.pretraining.task import CodebookCollapse, PretrainingTask, TrivialSolution


def detectors(num_groups=2):
    config = pretrain_config.get_config("tiny")
    config.model.num_codevector_groups = num_groups
    return PretrainingTask().detectors(config)


def run(records):
    return observe(detectors(), records)


def test_the_task_watches_its_codebook_its_contrastive_task_and_the_loop():
    found = detectors(num_groups=3)
    assert [d.name for d in found] == ["codebook_collapse", "trivial_solution", "grad_norm_collapse", "divergence"]
    assert found[0] == CodebookCollapse(num_groups=3)
    assert detectors()[0] is not detectors()[0]  # every run gets its own (their running figures)


def test_a_healthy_stream_raises_nothing():
    monitor, names = run(healthy_stream())
    assert names == [[]] * 40
    assert monitor.summary() == "no failure detected"


@pytest.mark.parametrize(
    "condition, change, evidence",
    [
        (
            CodebookCollapse.name,
            lambda r, i: r.update(code_perplexity=3.5 - 0.05 * i),
            "code perplexity 3.40 <= 2 x 2 groups",
        ),
        (
            TrivialSolution.name,
            lambda r, i: r.update(contrastive_loss=0.01, loss=0.09, accuracy=0.995),
            "contrastive loss 0.0100, accuracy 0.995",
        ),
        *GENERIC_CASES,
    ],
)
def test_each_condition_fires_after_its_window_with_evidence_and_advice(condition, change, evidence):
    check_fires_after_its_window(detectors(), condition, change, evidence)


def test_a_condition_must_hold_for_the_whole_window():
    # Collapse on two records out of every three never fires; a third in a row does.
    records = healthy_stream()
    for i in range(10, 19):
        if i % 3:
            records[i]["code_perplexity"] = 3.0
    assert run(records)[1] == [[]] * 40
    records[12]["code_perplexity"] = 3.0
    assert run(records)[1][13] == [CodebookCollapse.name]


def test_no_codebook_no_collapse_and_missing_metrics_are_no_evidence():
    records = [{"step": i, "loss": 1.0, "code_perplexity": 1.0, "skipped_nonfinite": 0} for i in range(1, 6)]
    assert run(records)[1][-1] == [CodebookCollapse.name]
    assert observe(detectors(num_groups=None), records)[1] == [[]] * 5
