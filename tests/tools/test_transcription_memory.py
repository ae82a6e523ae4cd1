"""tools/transcription_memory.py (docs/transcription.md's figures): the inputs it writes and one
measured `w2v-transcribe` process."""

import pathlib

import soundfile

import w2v_jax
from tools import transcription_memory
from w2v_jax.data.manifest import read_manifest


def test_the_memory_tool_writes_its_files_and_measures_a_transcription(tmp_path):
    manifests = transcription_memory.write_inputs(tmp_path, [1, 3], seconds=0.5)
    assert [len(read_manifest(manifests[n])) for n in (1, 3)] == [1, 3]
    files = [read_manifest(manifests[3]).file_path(i) for i in range(3)]
    waveforms = [soundfile.read(f, dtype="float32")[0] for f in files]
    assert all(len(w) == 8000 for w in waveforms) and all(w.std() > 0 for w in waveforms)  # speech, not silence
    assert not (waveforms[0] == waveforms[1]).all()  # each file its own stretch of the corpus
    (package, figures), *others = transcription_memory.peak_memory(tmp_path, {1: manifests[1]}, runs=1).items()
    assert not others and pathlib.Path(package) == pathlib.Path(w2v_jax.__path__[0])
    assert figures[1] > 100  # MiB: Python, JAX and a compiled model at least
