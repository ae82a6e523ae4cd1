"""Every launcher (`python -m experiments.<name>`, `python -m tools.<name>`) still parses its documented command lines.

The launchers' flags are defined in `w2v_jax.cli.<name>` (the installed `w2v-<name>` commands);
`experiments/<name>.py` forwards to it.

The launchers define absl flags at import, several with the same names, so one process can hold
one launcher's flags at a time: a subprocess imports each in turn (as `python -m` would, with the
command line in sys.argv), parses the command line, records the values and removes the flags again.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PARSE = r"""
import importlib, json, sys
from absl import flags

results = []
for launcher, defining_module, argv in json.loads(sys.argv[1]):
    sys.argv = ["prog", *argv]  # config_flags reads `--config.*` overrides from sys.argv when defined
    importlib.import_module(launcher)
    positional = flags.FLAGS(sys.argv)[1:]
    defined = list(flags.FLAGS.flags_by_module_dict().get(defining_module, []))
    values = {f.name: f.value for f in defined if f.name != "config"}
    if "config" in flags.FLAGS:
        values["config"] = flags.FLAGS.config.to_dict()
    results.append({"positional": positional, "values": values})
    flags.FLAGS.unparse_flags()
    for f in defined:
        delattr(flags.FLAGS, f.name)
    sys.modules.pop(launcher)
    sys.modules.pop(defining_module, None)
print(json.dumps(results, default=str))
"""

PRETRAIN = "experiments/configs/pretrain.py"
# (launcher, module defining its flags, an old command line, expected positional arguments, expected values)
CASES = [
    ("experiments.pretrain", "w2v_jax.cli.pretrain",
     [f"--config={PRETRAIN}:tiny", "--workdir=runs/tiny", "--config.train.batch_size=64", "--host_malloc=system"],
     [], {"workdir": "runs/tiny", "host_malloc": "system"}),
    ("experiments.compare_pytorch", "w2v_jax.cli.compare_pytorch",
     [f"--config={PRETRAIN}:tiny", "--steps=100", "--workdir=runs/compare_tiny", "--external=a.jsonl",
      "--external=b.csv", "--window", "5"],
     [], {"steps": 100, "workdir": "runs/compare_tiny", "external": ["a.jsonl", "b.csv"], "window": 5}),
    ("experiments.sweep", "w2v_jax.cli.sweep",
     ["--config=experiments/configs/codebook_ablation.py", "--workdir=runs/codebook", "--print-commands",
      "--collect-only", "--valid_manifest=v.tsv", "--max_utterances=4"],
     [], {"print-commands": True, "collect-only": True, "valid_manifest": "v.tsv", "max_utterances": 4}),
    ("experiments.evaluate", "w2v_jax.cli.evaluate",
     ["--checkpoint=hf_folder", "--manifest=valid.tsv", "--probe_train_manifest=train.tsv", "--step=40",
      "--features=conv", "--nobaselines", "--output=out", "--seed=1", "--max_utterances=3", "--metadata=m.jsonl"],
     [], {"checkpoint": "hf_folder", "manifest": "valid.tsv", "probe_train_manifest": "train.tsv", "step": 40,
          "features": "conv", "baselines": False, "output": "out", "metadata": "m.jsonl"}),
    # New: the phone probe's protocol and steps.
    ("experiments.evaluate", "w2v_jax.cli.evaluate",
     ["--checkpoint=w", "--held_out_voices=m1,f3", "--probe_steps=50"],
     [], {"features": "layers", "held_out_voices": ["m1", "f3"], "probe_steps": 50}),
    ("experiments.sweep", "w2v_jax.cli.sweep",
     ["--config=codebook_ablation.py:tiny", "--workdir=w", "--noprobe", "--held_out_voices=", "--probe_steps=9",
      "--probe_train_manifest=t.tsv"],
     [], {"probe": False, "held_out_voices": [], "probe_steps": 9, "probe_train_manifest": "t.tsv"}),
    ("experiments.plot_representations", "w2v_jax.cli.plot_representations",
     ["--checkpoint=hf_folder", "--audio=speech.flac", "--out=reps.png", "--step", "3"],
     [], {"checkpoint": "hf_folder", "audio": "speech.flac", "out": "reps.png", "step": 3}),
    ("experiments.benchmark", "w2v_jax.cli.benchmark",
     [f"--config={PRETRAIN}:small", "--batch=4", "--seconds=4", "--vs-pytorch", "--steps=5", "--precision=bfloat16",
      "--remat-memory", "--warmup=2", "--profile=/tmp/prof", "--remat"],
     [], {"batch": 4, "seconds": 4.0, "vs-pytorch": True, "precision": "bfloat16", "remat-memory": True,
          "profile": "/tmp/prof", "remat": True}),
    ("experiments.benchmark_input", "w2v_jax.cli.benchmark_input",
     ["--manifest", "M", "--workers", "0,1,2", "--batch-size", "8", "--batches", "60", "--warmup", "3", "--pad",
      "--max-sample-size", "100", "--min-sample-size", "10"],
     [], {"manifest": "M", "workers": ["0", "1", "2"], "batch-size": 8, "batches": 60, "pad": True,
          "max-sample-size": 100, "min-sample-size": 10, "vs-train-step": []}),
    ("experiments.benchmark_input", "w2v_jax.cli.benchmark_input",
     ["--vs-train-step", "tiny,small", "--workers", "0,2", "--batches", "30"],
     [], {"vs-train-step": ["tiny", "small"], "workers": ["0", "2"], "batches": 30, "pad": False}),
    ("experiments.prepare_manifest", "w2v_jax.cli.prepare_manifest",
     ["/data/LibriSpeech/train-clean-100", "--out", "train.tsv", "--valid-fraction", "0.01", "--seed", "3",
      "--workers", "4", "--strict"],
     ["/data/LibriSpeech/train-clean-100"], {"out": "train.tsv", "valid-fraction": 0.01, "seed": 3, "workers": 4,
                                             "strict": True}),
    ("experiments.convert_checkpoint", "w2v_jax.cli.convert_checkpoint",
     ["hf-to-jax", "path/to/hf_folder", "path/to/jax_folder"], ["hf-to-jax", "path/to/hf_folder", "path/to/jax_folder"],
     {}),
    ("experiments.make_tts_corpus", "tools.make_tts_corpus",
     ["--out", "w2v_jax/data/corpus", "--minutes", "15.25", "--max-bytes", "10000000"],
     [], {"out": "w2v_jax/data/corpus", "minutes": 15.25, "max-bytes": 10_000_000}),
    ("tools.make_tts_corpus", "tools.make_tts_corpus", ["--seed", "2"], [], {"seed": 2}),
    ("experiments.finetune", "w2v_jax.cli.finetune",
     ["--config=experiments/configs/finetune.py:base_10m", "--workdir=runs/ft", "--config.init=runs/base",
      "--config.train.eval_every=500"],
     [], {"workdir": "runs/ft", "host_malloc": "reuse"}),
    ("experiments.transcribe", "w2v_jax.cli.transcribe", ["--checkpoint=runs/ft", "--step=3", "a.flac", "v.tsv"],
     ["a.flac", "v.tsv"], {"checkpoint": "runs/ft", "step": 3, "batch_size": 8}),
    # New: the export's --step, and configs named by their file in the package (any directory).
    ("experiments.convert_checkpoint", "w2v_jax.cli.convert_checkpoint",
     ["jax-to-hf", "runs/tiny", "hf_folder", "--step=200"], ["jax-to-hf", "runs/tiny", "hf_folder"], {"step": 200}),
    ("w2v_jax.cli.pretrain", "w2v_jax.cli.pretrain", ["--config=pretrain:base", "--workdir=w"], [], {"workdir": "w"}),
]


def test_every_launcher_parses_its_old_command_lines():
    cases = [[launcher, module, argv] for launcher, module, argv, _, _ in CASES]
    result = subprocess.run(
        [sys.executable, "-c", _PARSE, json.dumps(cases)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(parsed) == len(CASES)
    for (launcher, _, argv, positional, expected), got in zip(CASES, parsed):
        assert got["positional"] == positional, (launcher, argv)
        assert {k: got["values"][k] for k in expected} == expected, (launcher, argv)
    pretrain_config = parsed[0]["values"]["config"]
    assert pretrain_config["variant"] == "tiny" and pretrain_config["train"]["batch_size"] == 64
    assert parsed[7]["values"]["config"]["variant"] == "small"
    finetune_config = parsed[-4]["values"]["config"]
    assert finetune_config["variant"] == "base_10m" and finetune_config["init"] == "runs/base"
    assert finetune_config["train"]["eval_every"] == 500
    assert parsed[-1]["values"]["config"]["variant"] == "base"
