"""w2v_jax/cli/plot_representations.py: the checkpoint it is given must be a pretraining model (the
figure draws its quantizer's and projections' outputs; the end-to-end run: tests/e2e/test_evaluate.py)."""

from types import SimpleNamespace

import pytest
from absl import app
from flax import nnx

from tests.support.ctc import CONFIG, VOCABULARY
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.cli import plot_representations
from w2v_jax.model import Wav2Vec2ForCTC


def test_a_fine_tuned_checkpoint_is_refused_in_one_line(tmp_path):
    save_checkpoint(CONFIG, Wav2Vec2ForCTC(CONFIG, rngs=nnx.Rngs(0)), tmp_path / "ctc", vocabulary=VOCABULARY)
    flags = {"audio": "", "checkpoint": str(tmp_path / "ctc"), "step": None, "out": str(tmp_path / "reps.png")}
    args = SimpleNamespace(**{name: SimpleNamespace(value=value) for name, value in flags.items()})
    with pytest.raises(app.UsageError, match="holds a Wav2Vec2ForCTC: the figure needs a pretraining model"):
        plot_representations.main(["w2v-plot-representations"], args)
    assert not (tmp_path / "reps.png").exists()
