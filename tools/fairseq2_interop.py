"""The one-off check against fairseq2 itself: fairseq2 loads what we write, we load what it writes.
A maintenance tool of this repository, run from its root (docs/checkpoints.md says what it showed):

    python -m tools.fairseq2_interop DIR [--fairseq2_python=/work/fs2venv/bin/python]

fairseq2 (0.8.1) is not a dependency: it pins a CUDA build of torch and needs libsndfile1, so it
lives in an environment of its own (`python3 -m venv /work/fs2venv && /work/fs2venv/bin/pip install
fairseq2==0.8.1`, `apt-get install libsndfile1`), and the suite checks the structure without it
(tests/checkpoints/test_fairseq2.py). Three steps:

1. `write`: a `base` pretraining model and a `base_10h` CTC model of ours (seeded, full size), exported
   with `save_fairseq2_checkpoint` (`ours_ssl.pt`, `ours_ctc.pt`), a second of noise (`audio.npy`) and
   our outputs on it;
2. `tools/fairseq2_interop_reference.py` in fairseq2's environment: fairseq2's loader reads our
   files strictly, runs them, and writes its own freshly built models (`fs2_ssl.pt`, `fs2_ctc.pt`)
   with their outputs;
3. `compare`: fairseq2's outputs on our files against ours, and our import of fairseq2's files
   (architecture named from the shapes) against fairseq2's outputs. Prints the relative errors
   (max |ours - theirs| / max |theirs|) and exits 1 above `TOLERANCE`.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from w2v_jax.checkpoints.fairseq2 import PRESETS, load_fairseq2_checkpoint, save_fairseq2_checkpoint
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

NUM_UPDATES = 777
VOCAB_SIZE = 32
TOLERANCE = 1e-4  # float32 through 12 layers in two frameworks; the suite's 1e-5 is on 2-3 layers


def _outputs(model, audio: np.ndarray) -> dict[str, np.ndarray]:
    model.eval()
    out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, audio)
    if isinstance(model, Wav2Vec2ForCTC):
        return {"ctc_logits": np.asarray(out.logits)}
    return {
        "ssl_encoder": np.asarray(out.hidden_states[-1]),
        "ssl_projected": np.asarray(out.projected_states),
        "ssl_targets": np.asarray(out.projected_quantized_states),
    }


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    audio = np.random.default_rng(0).standard_normal((1, SAMPLE_RATE)).astype(np.float32)
    np.save(folder / "audio.npy", audio)
    np.save(folder / "vocab_size.npy", np.asarray(VOCAB_SIZE))
    ssl = Wav2Vec2ForPreTraining(PRESETS["base"].config, rngs=nnx.Rngs(0))
    ctc = Wav2Vec2ForCTC(PRESETS["base_10h"].config.replace(vocab_size=VOCAB_SIZE), rngs=nnx.Rngs(1))
    print("ours_ssl.pt as", save_fairseq2_checkpoint(ssl, folder / "ours_ssl.pt", num_updates=NUM_UPDATES))
    print("ours_ctc.pt as", save_fairseq2_checkpoint(ctc, folder / "ours_ctc.pt"))
    np.savez(folder / "ours.npz", **_outputs(ssl, audio), **_outputs(ctc, audio))


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, fairseq2's {theirs.shape}")
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def compare(folder: Path) -> bool:
    audio = np.load(folder / "audio.npy")
    ours, theirs = np.load(folder / "ours.npz"), np.load(folder / "fairseq2_on_ours.npz")
    errors = {f"fairseq2 on our {name}": _relative_error(ours[name], theirs[name]) for name in ours.files}
    ok = int(theirs["ssl_num_updates"]) == NUM_UPDATES
    print(f"fairseq2 read our quantizer.num_updates {int(theirs['ssl_num_updates'])} (wrote {NUM_UPDATES})")
    own = np.load(folder / "fairseq2_own.npz")
    for file in ("fs2_ssl.pt", "fs2_ctc.pt"):
        imported = load_fairseq2_checkpoint(folder / file)
        print(f"{file}: {imported.summary()}")
        if file == "fs2_ssl.pt":
            ok &= imported.num_updates == int(own["ssl_num_updates"])
        for name, value in _outputs(imported.model, audio).items():
            errors[f"ours on fairseq2's {name}"] = _relative_error(value, own[name])
    for name, error in errors.items():
        print(f"{name}: relative error {error:.2e}")
    return ok and all(error < TOLERANCE for error in errors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--fairseq2_python", default="/work/fs2venv/bin/python", help="fairseq2's environment")
    args = parser.parse_args()
    write(args.folder)
    reference = Path(__file__).with_name("fairseq2_interop_reference.py")
    subprocess.run([args.fairseq2_python, str(reference), str(args.folder)], check=True)
    ok = compare(args.folder)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
