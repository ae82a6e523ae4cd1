"""The accelerator check's dry run end to end, as CI runs it: steps 1, 2 and 4 on the CPU with tiny sizes,
step 3 collected only; every result in the folder and in its archive."""

import json
import tarfile

import pytest

from tests.support.launchers import run
from tools import accelerator_check


@pytest.mark.slow
def test_dry_run_runs_every_step_and_packs_its_results(tmp_path, env):
    output = tmp_path / "check"
    result = run("tools.accelerator_check", [f"--output={output}", "--dry_run"], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output / accelerator_check.SUMMARY).read_text())
    assert summary["dry_run"] is True
    assert [record["name"] for record in summary["steps"]] == ["environment", "benchmark", "tests", "pretraining"]
    assert all(c["status"] == "ok" for record in summary["steps"] for c in record["commands"]), summary
    environment, benchmark, tests, pretraining = (record["verdict"] for record in summary["steps"])
    assert environment["devices"]["backend"] == "cpu" and not environment.get("failed")
    assert environment["imports"]["failed"] == {} and environment["imports"]["modules"] > 50
    assert "tiny_train_steps" not in environment  # on the CPU: steps 2 and 4 run it
    assert environment["matmul"]["bf16_tflops"] > 0
    assert len(benchmark["ratios"]) == 1 and benchmark["ratios"][0] > 0 and len(benchmark["w2v_jax_mfu"]) == 1
    assert "tests collected" in tests["summary"]
    assert 0 <= pretraining["accuracy"] <= 1 and 0 < pretraining["chance_accuracy"] < 1
    with tarfile.open(output / accelerator_check.ARCHIVE) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(
        [accelerator_check.SUMMARY] + [f"{s}.log" for s in ("1_environment", "2_benchmark", "3_tests", "4_pretraining")]
    )
    # What a GPU machine hands back: at most 8 files.
    assert len(list(output.iterdir())) <= 8
