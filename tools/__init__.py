"""Maintenance tools of this repository, outside the library (run from the repository root):

- `python -m tools.accelerator_check`: what a GPU loan must find out (devices, the benchmark, the
  accelerator tests, a short pretraining), into one folder and one archive;
- `tools/device_wheels.py`: the wheels the GPU machine's image lacks, downloaded here, installed there;
- `python -m tools.make_tts_corpus`: regenerates the embedded corpus;
- `python -m tools.check_fairseq_full_size`: fairseq import and export at full size.
"""
