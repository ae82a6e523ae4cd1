"""Helpers shared by the tests: the repository's path, small generated corpora (`corpus`), an install
without the PyTorch reference (`imports`) and launcher runs in subprocesses (`launchers`)."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]

# The limit of a subprocess or notebook cell of a test: only against a hang. It is many times the
# longest run of any test on the slowest machine CI has had (the tiny fine-tuning run, under 4 min).
HANG_TIMEOUT = 3600
