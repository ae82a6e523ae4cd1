"""w2v_jax.research.profiling: a traced train step and its busiest XLA ops."""

import re

from w2v_jax.configs.pretrain import get_config
from w2v_jax.research import benchmark, profiling


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\[[^\]]*\]|'[^']*'|\S+)", line))


def test_profile_names_the_busiest_ops_of_the_step(tmp_path):
    """The tiny step on a 2 x 1 s batch, traced: ops sorted by time, their sum within the total."""
    settings = benchmark.BenchmarkSettings(batch_size=2, seconds=1.0, steps=2, warmup=1)
    lines = profiling.profile_train_step(get_config("tiny"), settings, tmp_path, top=10)
    header = _fields(lines[0])
    assert float(header["median_step_s"]) > 0
    assert list(tmp_path.rglob("*.xplane.pb")), "the trace was not kept"
    times = [float(line.split()[0]) for line in lines[1:]]
    assert len(times) == 10
    assert times == sorted(times, reverse=True)
    # The listed ops are some of the named ones; every op of the step is named in the HLO.
    assert 0 < sum(times) <= float(header["named_ops_ms_per_step"]) + 0.01 * len(times)
    assert all(line.split()[-1] for line in lines[1:])
