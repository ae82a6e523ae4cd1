"""fairseq2's half of the one-off interoperability check (`tools/fairseq2_interop.py` runs it).
Run with fairseq2 0.8.1's own environment, never ours (it imports fairseq2 and torch, not w2v_jax):

    /work/fs2venv/bin/python tools/fairseq2_interop_reference.py DIR

In DIR, `tools/fairseq2_interop.py write` left our exports (`ours_ssl.pt`, `ours_ctc.pt`) and the
waveform (`audio.npy`). This script loads each export with fairseq2's own loader
(`ModelHub.load_custom_model`: `torch.load(weights_only=True)`, fairseq2's state-dict converter and a
strict key and shape check) as the `base` and `base_10h` architectures, runs it in eval mode, and
writes the outputs (`fairseq2_on_ours.npz`). Then it builds fresh fairseq2 models of those
architectures (seeded), sets the quantizer's update count, saves their state dicts as fairseq2 0.5+
saves a model (`fs2_ssl.pt`, `fs2_ctc.pt`) and writes their outputs (`fairseq2_own.npz`) for our
side to compare.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # the quantizer's torch.compile: eager on CPU

import numpy as np
import torch
from fairseq2 import init_fairseq2
from fairseq2.models.wav2vec2 import get_wav2vec2_model_hub
from fairseq2.models.wav2vec2.asr import get_wav2vec2_asr_model_hub
from fairseq2.nn import BatchLayout

NUM_UPDATES = 12345


def pretraining_outputs(model, audio: torch.Tensor) -> dict[str, np.ndarray]:
    """The encoder's output, its projection (`final_proj`) and the projected quantized targets,
    without masking (eval mode)."""
    layout = BatchLayout.of(audio)
    frontend = model.encoder_frontend
    seqs, layout, _ = frontend.extract_features(audio, layout)
    targets = model.final_target_proj(model.quantizer(seqs).quantized_vectors)
    seqs, _ = frontend.process_features(seqs, layout, None)
    encoded = model.encoder(seqs, layout)
    return {"encoder": encoded.numpy(), "projected": model.final_proj(encoded).numpy(), "targets": targets.numpy()}


def ctc_outputs(model, audio: torch.Tensor) -> dict[str, np.ndarray]:
    logits, _ = model(audio, BatchLayout.of(audio))
    return {"logits": logits.numpy()}


def main(folder: Path) -> None:
    init_fairseq2()
    audio = torch.from_numpy(np.load(folder / "audio.npy"))
    ssl_hub, asr_hub = get_wav2vec2_model_hub(), get_wav2vec2_asr_model_hub()
    ssl_config, asr_config = ssl_hub.get_arch_config("base"), asr_hub.get_arch_config("base_10h")
    asr_config.target_vocab_size = int(np.load(folder / "vocab_size.npy"))
    outputs = {}
    with torch.no_grad():
        ssl = ssl_hub.load_custom_model(folder / "ours_ssl.pt", ssl_config, device=torch.device("cpu")).eval()
        outputs |= {f"ssl_{k}": v for k, v in pretraining_outputs(ssl, audio).items()}
        outputs["ssl_num_updates"] = np.asarray(int(ssl.quantizer.num_updates))
        ctc = asr_hub.load_custom_model(folder / "ours_ctc.pt", asr_config, device=torch.device("cpu")).eval()
        outputs |= {f"ctc_{k}": v for k, v in ctc_outputs(ctc, audio).items()}
    np.savez(folder / "fairseq2_on_ours.npz", **outputs)
    print("fairseq2 loaded ours_ssl.pt and ours_ctc.pt strictly; quantizer.num_updates", outputs["ssl_num_updates"])

    torch.manual_seed(0)
    own = {}
    with torch.no_grad():
        ssl = ssl_hub.create_new_model(ssl_config, device=torch.device("cpu")).eval()
        ssl.quantizer.num_updates.fill_(NUM_UPDATES)
        torch.save(ssl.state_dict(), folder / "fs2_ssl.pt")
        own |= {f"ssl_{k}": v for k, v in pretraining_outputs(ssl, audio).items()}
        ctc = asr_hub.create_new_model(asr_config, device=torch.device("cpu")).eval()
        torch.save(ctc.state_dict(), folder / "fs2_ctc.pt")
        own |= {f"ctc_{k}": v for k, v in ctc_outputs(ctc, audio).items()}
    np.savez(folder / "fairseq2_own.npz", **own, ssl_num_updates=np.asarray(NUM_UPDATES))
    print("fairseq2 wrote fs2_ssl.pt and fs2_ctc.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
