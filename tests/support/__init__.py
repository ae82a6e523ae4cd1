"""Helpers shared by the tests: the repository's path, small generated corpora (`corpus`), an install
without the PyTorch reference (`imports`) and launcher runs in subprocesses (`launchers`)."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
