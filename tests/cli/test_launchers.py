"""Every launcher (`python -m experiments.<name>`, `python -m tools.<name>`) parses its documented command
lines, and every repository forwarder runs its packaged launcher.

The launchers' flags are defined by `define_flags` in `w2v_jax.cli.<name>` (the installed `w2v-<name>`
commands); each case parses them on a fresh flag registry in this process (`support.launchers.parse`).
"""

import importlib

import pytest
from absl import flags

from tests.support import REPO
from tests.support.launchers import SHARED_CLI_MODULES, launcher_names, parse
from w2v_jax.cli import benchmark, finetune, pretrain

PRETRAIN = "experiments/configs/pretrain.py"
# (module defining the launcher's flags, a command line, expected positional arguments, expected values)
CASES = [
    (
        "w2v_jax.cli.pretrain",
        [f"--config={PRETRAIN}:tiny", "--workdir=runs/tiny", "--config.train.batch_size=64", "--host_malloc=system"],
        [],
        {"workdir": "runs/tiny", "host_malloc": "system"},
    ),
    (
        "w2v_jax.cli.compare_pytorch",
        [
            f"--config={PRETRAIN}:tiny",
            "--num_steps=100",
            "--workdir=runs/compare_tiny",
            "--external=a.jsonl",
            "--external=b.csv",
            "--window",
            "5",
        ],
        [],
        {"num_steps": 100, "workdir": "runs/compare_tiny", "external": ["a.jsonl", "b.csv"], "window": 5},
    ),
    (
        "w2v_jax.cli.compare_pytorch",
        [f"--config={PRETRAIN}:tiny", "--num_steps=7", "--workdir=w"],
        [],
        {"num_steps": 7},
    ),
    (
        "w2v_jax.cli.sweep",
        [
            "--config=experiments/configs/codebook_ablation.py",
            "--workdir=runs/codebook",
            "--print_commands",
            "--collect_only",
            "--valid_manifest=v.tsv",
            "--max_utterances=4",
        ],
        [],
        {"print_commands": True, "collect_only": True, "valid_manifest": "v.tsv", "max_utterances": 4},
    ),
    (
        "w2v_jax.cli.sweep",
        ["--config=codebook_ablation.py", "--workdir=w", "--print_commands", "--collect_only"],
        [],
        {"print_commands": True, "collect_only": True},
    ),
    (
        "w2v_jax.cli.evaluate",
        [
            "--checkpoint=hf_folder",
            "--manifest=valid.tsv",
            "--probe_train_manifest=train.tsv",
            "--step=40",
            "--features=conv",
            "--nobaselines",
            "--output=out",
            "--seed=1",
            "--max_utterances=3",
            "--metadata=m.jsonl",
        ],
        [],
        {
            "checkpoint": "hf_folder",
            "manifest": "valid.tsv",
            "probe_train_manifest": "train.tsv",
            "step": 40,
            "features": "conv",
            "baselines": False,
            "output": "out",
            "metadata": "m.jsonl",
        },
    ),
    (
        "w2v_jax.cli.evaluate",
        ["--checkpoint=w", "--held_out_voices=m1,f3", "--probe_steps=50"],
        [],
        {"features": "layers", "held_out_voices": ["m1", "f3"], "probe_steps": 50},
    ),
    (
        "w2v_jax.cli.sweep",
        [
            "--config=codebook_ablation.py:tiny",
            "--workdir=w",
            "--noprobe",
            "--held_out_voices=",
            "--probe_steps=9",
            "--probe_train_manifest=t.tsv",
        ],
        [],
        {"probe": False, "held_out_voices": [], "probe_steps": 9, "probe_train_manifest": "t.tsv"},
    ),
    (
        "w2v_jax.cli.plot_representations",
        ["--checkpoint=hf_folder", "--audio=speech.flac", "--out=reps.png", "--step", "3"],
        [],
        {"checkpoint": "hf_folder", "audio": "speech.flac", "out": "reps.png", "step": 3},
    ),
    (
        "w2v_jax.cli.benchmark",
        [
            f"--config={PRETRAIN}:small",
            "--batch=4",
            "--seconds=4",
            "--vs_pytorch",
            "--timed_steps=5",
            "--precision=bfloat16",
            "--remat_memory",
            "--warmup_steps=2",
            "--profile=/tmp/prof",
            "--remat",
        ],
        [],
        {
            "batch": 4,
            "seconds": 4.0,
            "vs_pytorch": True,
            "timed_steps": 5,
            "warmup_steps": 2,
            "precision": "bfloat16",
            "remat_memory": True,
            "profile": "/tmp/prof",
            "remat": True,
        },
    ),
    (
        "w2v_jax.cli.benchmark",
        ["--vs_pytorch", "--remat_memory", "--timed_steps=3", "--warmup_steps=1"],
        [],
        {"vs_pytorch": True, "remat_memory": True, "timed_steps": 3, "warmup_steps": 1},
    ),
    (
        "w2v_jax.cli.benchmark_input",
        [
            "--manifest",
            "M",
            "--workers",
            "0,1,2",
            "--batch_size",
            "8",
            "--timed_batches",
            "60",
            "--warmup_batches",
            "3",
            "--pad",
            "--max_sample_size",
            "100",
            "--min_sample_size",
            "10",
        ],
        [],
        {
            "manifest": "M",
            "workers": ["0", "1", "2"],
            "batch_size": 8,
            "timed_batches": 60,
            "warmup_batches": 3,
            "pad": True,
            "max_sample_size": 100,
            "min_sample_size": 10,
            "vs_train_step": [],
        },
    ),
    (
        "w2v_jax.cli.benchmark_input",
        ["--vs_train_step", "tiny,small", "--workers", "0,2", "--timed_batches", "30"],
        [],
        {"vs_train_step": ["tiny", "small"], "workers": ["0", "2"], "timed_batches": 30, "pad": False},
    ),
    (
        "w2v_jax.cli.benchmark_input",
        [
            "--librispeech_like=L",
            "--librispeech_like_rows=3000",
            "--max_tokens=11200000",
            "--batching",
            "--gpu_rate=500",
        ],
        [],
        {
            "librispeech_like": "L",
            "librispeech_like_rows": 3000,
            "librispeech_like_files": 200,
            "librispeech_like_rate": 16000,
            "max_tokens": 11_200_000,
            "num_buckets": 8,
            "batch_multiple": 8,
            "batching": True,
            "gpu_rate": 500.0,
        },
    ),
    (
        "w2v_jax.cli.benchmark_input",
        ["--vs_train_step=tiny", "--batch_size=2", "--timed_batches=5"],
        [],
        {"vs_train_step": ["tiny"], "batch_size": 2, "timed_batches": 5},
    ),
    (
        "w2v_jax.cli.prepare_manifest",
        [
            "/data/LibriSpeech/train-clean-100",
            "--out",
            "train.tsv",
            "--valid_fraction",
            "0.01",
            "--seed",
            "3",
            "--workers",
            "4",
            "--strict",
        ],
        ["/data/LibriSpeech/train-clean-100"],
        {"out": "train.tsv", "valid_fraction": 0.01, "seed": 3, "workers": 4, "strict": True},
    ),
    (
        "w2v_jax.cli.prepare_manifest",
        ["folder", "--out=t.tsv", "--valid_fraction=0.1"],
        ["folder"],
        {"valid_fraction": 0.1},
    ),
    (
        "w2v_jax.cli.prepare_shards",
        ["/data/train.tsv", "/data/train_shards", "--shard_mb", "64", "--labels", "ltr,wrd"],
        ["/data/train.tsv", "/data/train_shards"],
        {"shard_mb": 64.0, "labels": ["ltr", "wrd"], "allow_outside_root": False},
    ),
    (
        "w2v_jax.cli.benchmark_input",
        ["--manifest=M", "--shards=S", "--rounds=5", "--workers=1"],
        [],
        {"manifest": "M", "shards": "S", "rounds": 5, "workers": ["1"]},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["hf-to-jax", "path/to/hf_folder", "path/to/jax_folder"],
        ["hf-to-jax", "path/to/hf_folder", "path/to/jax_folder"],
        {"step": None, "allow_nonfinite": False, "dict": None},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["jax-to-hf", "runs/tiny", "hf_folder", "--step=200"],
        ["jax-to-hf", "runs/tiny", "hf_folder"],
        {"step": 200},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["fairseq-to-jax", "ft.pt", "jax_folder", "--dict", "dict.ltr.txt"],
        ["fairseq-to-jax", "ft.pt", "jax_folder"],
        {"dict": "dict.ltr.txt", "step": None},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["fairseq2-to-jax", "omni.pt", "jax_folder", "--arch=omnilingual_ctc_1b", "--tokenizer", "omni.model"],
        ["fairseq2-to-jax", "omni.pt", "jax_folder"],
        {"arch": "omnilingual_ctc_1b", "tokenizer": "omni.model", "num_updates": None},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["jax-to-fairseq2", "runs/base", "out.pt", "--step=400", "--num_updates=400"],
        ["jax-to-fairseq2", "runs/base", "out.pt"],
        {"step": 400, "num_updates": 400, "arch": None},
    ),
    (
        "tools.make_tts_corpus",
        ["--out", "w2v_jax/data/corpus", "--minutes", "15.25", "--max_bytes", "10000000"],
        [],
        {"out": "w2v_jax/data/corpus", "minutes": 15.25, "max_bytes": 10_000_000},
    ),
    ("tools.make_tts_corpus", ["--seed", "2", "--max_bytes=5"], [], {"seed": 2, "max_bytes": 5}),
    ("tools.make_new_language_corpus", ["--out", "/tmp/dutch"], [], {"out": "/tmp/dutch", "seed": 0}),
    (
        "tools.continued_pretraining",
        ["--data=/tmp/dutch", "--out=/tmp/continued", "--pretrained=/tmp/continued/A_pretrained"],
        [],
        {"data": "/tmp/dutch", "out": "/tmp/continued", "pretrained": "/tmp/continued/A_pretrained"},
    ),
    ("tools.check_fairseq_full_size", ["--size=large"], [], {"size": "large"}),
    (
        "tools.loading_memory",
        ["--variant=base", "--workdir=/tmp/base_run", "--runs=5", "--other_source=/src/main"],
        [],
        {"variant": "base", "workdir": "/tmp/base_run", "runs": 5, "other_source": "/src/main"},
    ),
    (
        "w2v_jax.cli.finetune",
        [
            "--config=experiments/configs/finetune.py:base_10m",
            "--workdir=runs/ft",
            "--config.init=runs/base",
            "--config.train.eval_every=500",
        ],
        [],
        {"workdir": "runs/ft", "host_malloc": "reuse"},
    ),
    (
        "w2v_jax.cli.transcribe",
        ["--checkpoint=runs/ft", "--step=3", "a.flac", "v.tsv"],
        ["a.flac", "v.tsv"],
        {"checkpoint": "runs/ft", "step": 3, "batch_size": 8},
    ),
    (
        "tools.accelerator_check",
        [
            "--output=/tmp/out/check",
            "--dry_run",
            "--budget_s=300",
            "--seconds=10",
            "--pretrain_steps=200",
            "--steps=2,4",
        ],
        [],
        {
            "output": "/tmp/out/check",
            "dry_run": True,
            "budget_s": 300.0,
            "seconds": 10.0,
            "pretrain_steps": 200,
            "steps": ["2", "4"],
        },
    ),
    (
        "w2v_jax.cli.benchmark",
        [f"--config={PRETRAIN}:base", "--batch=0", "--fill_fraction=0.5", "--precision=bfloat16"],
        [],
        {"batch": 0, "fill_fraction": 0.5, "precision": "bfloat16"},
    ),
    (
        "w2v_jax.cli.transcribe",
        ["--checkpoint=runs/ft", "--chunk_s=30", "--timestamps=word", "--output=t.jsonl", "--strict", "long.flac"],
        ["long.flac"],
        {"chunk_s": 30.0, "stride_s": None, "timestamps": "word", "output": "t.jsonl", "strict": True},
    ),
    (
        "w2v_jax.cli.benchmark_transcription",
        ["--checkpoint=runs/ft", "--measure=long_form", "--per_recording=3"],
        [],
        {"checkpoint": "runs/ft", "measure": "long_form", "per_recording": 3, "chunk_s": 20.0, "labels": "ltr"},
    ),
    (
        "w2v_jax.cli.align",
        ["--checkpoint=runs/ft_phn", "--manifest=v.tsv", "--out=al", "--labels=phn"],
        [],
        {
            "checkpoint": "runs/ft_phn",
            "manifest": "v.tsv",
            "out": "al",
            "labels": "phn",
            "level": None,
            "chunk_s": 20.0,
        },
    ),
    (
        "w2v_jax.cli.transcribe",
        ["--checkpoint=runs/ft", "--decoder=beam", "--lm=lm.arpa", "--lexicon=lex.txt", "--lm_weight=1.5", "a.flac"],
        ["a.flac"],
        {"decoder": "beam", "lm": "lm.arpa", "lexicon": "lex.txt", "lm_weight": 1.5, "word_score": 0.0},
    ),
    (
        "w2v_jax.cli.evaluate",
        ["--checkpoint=runs/ft", "--lm=lm.arpa", "--lm_weight=0,1,2", "--word_score=-1,0", "--beam_size=100"],
        [],
        {"lm": "lm.arpa", "lm_weight": ["0", "1", "2"], "word_score": ["-1", "0"], "beam_size": 100},
    ),
    (
        "w2v_jax.cli.build_lm",
        ["--text=a.txt,train.tsv", "--order=3", "--prune=0,1,2", "--out=lm.arpa"],
        [],
        {"text": ["a.txt", "train.tsv"], "order": 3, "prune": ["0", "1", "2"], "unit": "word", "out": "lm.arpa"},
    ),
    (
        "w2v_jax.cli.convert_checkpoint",
        ["jax-to-hf", "runs/ft", "out", "--lm=lm.arpa", "--lm_weight=2"],
        ["jax-to-hf", "runs/ft", "out"],
        {"lm": "lm.arpa", "lm_weight": 2.0},
    ),
    # Configs named by their file in the package (any directory).
    ("w2v_jax.cli.pretrain", ["--config=pretrain:base", "--workdir=w"], [], {"workdir": "w"}),
]


@pytest.mark.parametrize("module, argv, positional, expected", CASES, ids=[f"{c[0]}:{i}" for i, c in enumerate(CASES)])
def test_every_launcher_parses_its_command_lines(module, argv, positional, expected):
    parsed_positional, args = parse(importlib.import_module(module), argv)
    assert parsed_positional[1:] == positional
    assert {name: getattr(args, name).value for name in expected} == expected


# The dashed and shorter spellings older launchers accepted: gone, each flag has its snake_case name only.
REMOVED_SPELLINGS = [
    ("w2v_jax.cli.benchmark", "--vs-pytorch"),
    ("w2v_jax.cli.benchmark", "--remat-memory"),
    ("w2v_jax.cli.benchmark", "--steps=5"),
    ("w2v_jax.cli.benchmark", "--warmup=2"),
    ("w2v_jax.cli.benchmark_input", "--batch-size=8"),
    ("w2v_jax.cli.benchmark_input", "--batches=60"),
    ("w2v_jax.cli.benchmark_input", "--warmup=3"),
    ("w2v_jax.cli.benchmark_input", "--max-sample-size=100"),
    ("w2v_jax.cli.benchmark_input", "--min-sample-size=10"),
    ("w2v_jax.cli.benchmark_input", "--vs-train-step=tiny"),
    ("w2v_jax.cli.compare_pytorch", "--steps=100"),
    ("w2v_jax.cli.sweep", "--print-commands"),
    ("w2v_jax.cli.sweep", "--collect-only"),
    ("w2v_jax.cli.prepare_manifest", "--valid-fraction=0.01"),
    ("tools.make_tts_corpus", "--max-bytes=5"),
    ("tools.accelerator_check", "--dry-run"),
]


@pytest.mark.parametrize("module, argument", REMOVED_SPELLINGS, ids=[f"{m}:{a}" for m, a in REMOVED_SPELLINGS])
def test_older_spellings_are_unknown_flags(module, argument):
    with pytest.raises(flags.UnrecognizedFlagError, match=argument.split("=")[0].lstrip("-")):
        parse(importlib.import_module(module), [argument])


def test_config_flags_take_their_overrides_and_the_package_path():
    _, args = parse(pretrain, [f"--config={PRETRAIN}:tiny", "--workdir=w", "--config.train.batch_size=64"])
    assert args.config.value.variant == "tiny" and args.config.value.train.batch_size == 64
    _, args = parse(benchmark, [f"--config={PRETRAIN}:small"])
    assert args.config.value.variant == "small"
    _, args = parse(
        finetune,
        [
            "--config=experiments/configs/finetune.py:base_10m",
            "--workdir=w",
            "--config.init=runs/base",
            "--config.train.eval_every=500",
        ],
    )
    assert (args.config.value.variant, args.config.value.init, args.config.value.train.eval_every) == (
        "base_10m",
        "runs/base",
        500,
    )
    _, args = parse(pretrain, ["--config=pretrain:base", "--workdir=w"])
    assert args.config.value.variant == "base"
    with pytest.raises(SystemExit, match=r"unknown config field in --config.train.batch_sise"):
        parse(pretrain, ["--config=pretrain:tiny", "--workdir=w", "--config.train.batch_sise=3"])


def test_every_forwarder_runs_its_launcher_and_every_launcher_is_complete():
    for name in launcher_names():
        assert f"from w2v_jax.cli.{name} import run" in (REPO / "experiments" / f"{name}.py").read_text()
        module = importlib.import_module(f"w2v_jax.cli.{name}")
        assert callable(module.define_flags) and callable(module.main) and callable(module.run), name
    for name in SHARED_CLI_MODULES:  # what the launchers share is no command
        assert not hasattr(importlib.import_module(f"w2v_jax.cli.{name}"), "run"), name
    forwarders = {p.stem for p in (REPO / "experiments").glob("*.py")} - {"__init__", "make_tts_corpus"}
    assert forwarders == set(launcher_names())
