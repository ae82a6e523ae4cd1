"""w2v_jax/checkpoints/folder.py: our folder format's integrity record, verified on load."""

import json

import numpy as np
import pytest
from flax import nnx

from tests.support.ctc import CONFIG, VOCABULARY
from w2v_jax.checkpoints.folder import (
    INTEGRITY_FILE,
    PARAMS_FILE,
    DamagedCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from w2v_jax.model import Wav2Vec2ForCTC


def _saved(tmp_path):
    model = Wav2Vec2ForCTC(CONFIG, rngs=nnx.Rngs(0))
    save_checkpoint(CONFIG, model, tmp_path / "best", vocabulary=VOCABULARY)
    return tmp_path / "best"


def test_the_record_covers_every_file_written_and_loads(tmp_path):
    folder = _saved(tmp_path)
    recorded = json.loads((folder / INTEGRITY_FILE).read_text())["sha256"]
    assert set(recorded) == {f.name for f in folder.iterdir()} - {INTEGRITY_FILE}
    assert {PARAMS_FILE, "config.json", "vocab.json"} <= set(recorded)
    # A file written beside the model afterwards (the best model's transcripts) is not the model's.
    (folder / "transcripts.txt").write_text("old\n")
    save_checkpoint(CONFIG, Wav2Vec2ForCTC(CONFIG, rngs=nnx.Rngs(1)), folder, vocabulary=VOCABULARY)
    (folder / "transcripts.txt").write_text("new\n")
    load_checkpoint(folder)


def test_64_flipped_bytes_in_the_weights_are_one_line_naming_the_file(tmp_path):
    folder = _saved(tmp_path)
    data = bytearray((folder / PARAMS_FILE).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (folder / PARAMS_FILE).write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match=rf"{PARAMS_FILE}: damaged \(its SHA-256 differs") as error:
        load_checkpoint(folder)
    assert "\n" not in str(error.value)


def test_a_missing_file_or_record_damage_is_named_and_old_folders_still_load(tmp_path):
    folder = _saved(tmp_path)
    (folder / "vocab.json").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"vocab.json: missing \(recorded in integrity.json\)"):
        load_checkpoint(folder)
    (folder / INTEGRITY_FILE).write_text("{not json")
    with pytest.raises(DamagedCheckpointError, match="damaged integrity record"):
        load_checkpoint(folder)
    (folder / INTEGRITY_FILE).unlink()  # written before the record existed: loads unchecked
    config, model = load_checkpoint(folder)
    assert config == CONFIG and np.all(np.isfinite(np.asarray(model.lm_head.kernel[...])))
