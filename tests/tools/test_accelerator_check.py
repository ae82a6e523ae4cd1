"""Tests of tools/accelerator_check.py's parts (the whole dry run: test_accelerator_check_dry_run.py) and of
tools/device_wheels.py, which installs its wheels on the device."""

import json
import pathlib
import sys
import tarfile

import pytest

from tests.support import xla_flags
from tools import accelerator_check as check
from tools import device_wheels


def test_our_pins_pass_every_compatibility_check():
    report = check.compatibility_report()
    assert report and all(ok is True for ok in report.values()), report


def test_every_accelerator_test_file_exists():
    for name in check.ACCELERATOR_TEST_FILES:
        assert (check.REPO / name).is_file(), name


def test_the_device_tests_set_their_own_xla_flags():
    # The suite's CPU compile options are the pinned jaxlib's: on the device (another jaxlib) the tests
    # run with the simulated CPU devices only, the accelerator chosen by JAX.
    (command,) = check.tests_step(check.CheckSettings(output=pathlib.Path("x"))).commands
    assert command.env == {"JAX_PLATFORMS": "", "XLA_FLAGS": check.DEVICE_TEST_XLA_FLAGS}
    assert "xla_cpu" not in check.DEVICE_TEST_XLA_FLAGS and "optimization_level" not in check.DEVICE_TEST_XLA_FLAGS
    assert xla_flags(8).startswith(check.DEVICE_TEST_XLA_FLAGS + " ")  # the same simulated devices


def test_benchmark_verdict_reads_the_printed_figures():
    output = (
        "fill_batch=12 capacity_mib=1000\nconfig=base ...\n"
        "w2v_jax: device=gpu(H200) median_step_s=0.5 audio_s_per_s=360.00 mfu=0.4100 compile_s=41.20 xla_temp_mib=1\n"
        "pytorch: device=cuda(H200) median_step_s=0.8 mfu=0.2500 compile_s=none(eager)\nratio=1.600\n"
        "fill_batch=7\nw2v_jax: device=gpu mfu=0.3000 compile_s=30.00\nratio=0.950\n"
    )
    assert check.benchmark_verdict(output) == {
        "ratios": [1.6, 0.95],
        "w2v_jax_mfu": [0.41, 0.3],
        "w2v_jax_compile_s": [41.2, 30.0],
        "fill_batches": [12, 7],
    }
    # Later commands of the step run at the last batch an earlier one found.
    assert check._fill_batch(output, 1) == 7 and check._fill_batch("", 3) == 3


def test_pretraining_verdict_compares_the_last_accuracy_with_chance(tmp_path):
    records = [
        {"step": 10, "accuracy": 0.02, "chance_accuracy": 0.0099},
        {"step": 20, "loss": 3.0},
        {"step": 30, "accuracy": 0.05, "chance_accuracy": 0.0099, "audio_seconds_per_second": 900.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    verdict = check.pretraining_verdict(tmp_path)
    assert verdict["step"] == 30 and verdict["left_chance"] is True
    records[-1]["accuracy"] = 0.015  # above chance, but not twice it
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert check.pretraining_verdict(tmp_path)["left_chance"] is False
    assert check.pretraining_verdict(tmp_path / "none")["left_chance"] is None


def test_tests_verdict_reads_pytest_summary():
    assert (
        check.tests_verdict("...\n==== 3 failed, 40 passed in 12.1s ====\n")["summary"]
        == "3 failed, 40 passed in 12.1s"
    )
    assert check.tests_verdict("71 tests collected in 5.14s")["summary"] == "71 tests collected in 5.14s"


def test_a_command_past_its_cap_is_killed_and_the_rest_still_reported(tmp_path, monkeypatch):
    # A hanging step, a failing one and one that prints: each recorded with its status, the
    # summary and logs written, and one archive holding them all.
    def command(label, code, cap=30.0):
        return check.Command(label, lambda _: [sys.executable, "-c", code], cap)

    steps = [
        check.Step(1, "hang", (command("sleep", "import time; time.sleep(60)", cap=1.0),)),
        check.Step(2, "fail", (command("raise", "raise SystemExit(3)"), command("after", "print('fill_batch=5')"))),
        check.Step(
            3,
            "reuse",
            (check.Command("argv", lambda out: [sys.executable, "-c", f"print({check._fill_batch(out, 0)} + 1)"], 30),),
        ),
    ]
    monkeypatch.setattr(check, "MIN_CAP_SECONDS", 0.5)
    summary = check.run_steps(steps, tmp_path, budget_seconds=60)
    statuses = [[c["status"] for c in record["commands"]] for record in summary["steps"]]
    assert statuses == [["timeout"], ["failed", "ok"], ["ok"]]
    assert summary["steps"][1]["commands"][0]["exit"] == 3
    assert json.loads((tmp_path / check.SUMMARY).read_text()) == summary
    with tarfile.open(tmp_path / check.ARCHIVE) as tar:
        assert sorted(tar.getnames()) == sorted([check.SUMMARY, "1_hang.log", "2_fail.log", "3_reuse.log"])
    assert "fill_batch=5" in (tmp_path / "2_fail.log").read_text()


def test_commands_past_the_budget_are_skipped(tmp_path):
    step = check.Step(1, "late", (check.Command("never", lambda _: [sys.executable, "-c", "pass"], 30),))
    summary = check.run_steps([step], tmp_path, budget_seconds=1)
    assert summary["steps"][0]["commands"] == [{"label": "never", "status": "skipped (budget spent)"}]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="must be positive"):
        check.CheckSettings(output=pathlib.Path("x"), budget_seconds=0)
    with pytest.raises(ValueError, match="steps must be among"):
        check.CheckSettings(output=pathlib.Path("x"), steps=(2, 5))


def test_device_wheels_install_what_is_missing_and_ours_only_over_older_versions():
    minimums = device_wheels.minimum_versions()
    assert minimums["flax"] == "0.12.8" and minimums["orbax-checkpoint"] == "0.12.8"
    assert device_wheels.version_tuple("0.12.10rc1+cu13") > device_wheels.version_tuple("0.12.8")
    wheels = [
        pathlib.Path(".whl/flax-0.12.8-py3-none-any.whl"),
        pathlib.Path(".whl/optax-0.2.8-py3-none-any.whl"),
        pathlib.Path(".whl/orbax_checkpoint-0.12.8-py3-none-any.whl"),
        pathlib.Path(".whl/ml_collections-1.1.0-py3-none-any.whl"),
    ]
    installed = {"jax": "0.10.2", "flax": "0.12.3", "optax": "0.2.9", "orbax-checkpoint": None, "ml-collections": None}

    def chosen(installed):
        return {pathlib.Path(w).name: why for w, why in device_wheels.choose(wheels, installed, minimums).items()}

    assert chosen(installed) == {
        "flax-0.12.8-py3-none-any.whl": "image has 0.12.3 < our minimum 0.12.8",
        "orbax_checkpoint-0.12.8-py3-none-any.whl": "not in the image",
        "ml_collections-1.1.0-py3-none-any.whl": "not in the image",
    }
    # Our flax 0.12.8 can't import under JAX 0.11.2: the image's older one stays.
    assert "flax-0.12.8-py3-none-any.whl" not in chosen({**installed, "jax": "0.11.2"})
