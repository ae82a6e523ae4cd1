"""The transcribe, align and evaluate launchers in this process on a tiny saved CTC model: unreadable
files among good ones, a damaged model, timestamps as JSON lines, forced alignment of a manifest's
transcripts, files streamed a few batches at a time (the results of all at once, those before a late
error written)."""

import json

import numpy as np
import pytest
import soundfile
from absl import app
from flax import nnx

from tests.support.corpus import make_corpus
from tests.support.launchers import run_main
from w2v_jax.asr import transcription
from w2v_jax.asr.error_rates import error_rate_metrics
from w2v_jax.asr.evaluator import evaluate_finetuned_checkpoint
from w2v_jax.asr.transcription import READ_BATCHES, transcribe_files
from w2v_jax.checkpoints.folder import PARAMS_FILE, save_checkpoint
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.cli import align, evaluate, transcribe
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.labels import label_path
from w2v_jax.data.manifest import read_manifest, write_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

VOCABULARY = Vocabulary.from_symbols("abcde")
TRANSCRIPTS = ["ab cd", "e", "dea b", "c a", "bad", "a e"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctc") / "model"
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(VOCABULARY), feat_extract_norm="group")
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 300  # varied argmax per frame
    save_checkpoint(config, model, folder, vocabulary=VOCABULARY)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    manifest = make_corpus(folder)
    label_path(manifest, "wrd").write_text("".join(f"{t}\n" for t in TRANSCRIPTS), encoding="utf-8")
    return manifest


def test_unreadable_files_are_reported_and_counted_and_the_others_transcribed(checkpoint, corpus, tmp_path, capsys):
    files = [str(read_manifest(corpus).file_path(i)) for i in range(2)]
    (tmp_path / "broken.flac").write_bytes(b"not audio at all" * 10)
    soundfile.write(tmp_path / "short.wav", np.zeros(100, np.float32), 16000)
    argv = [
        f"--checkpoint={checkpoint}",
        files[0],
        str(tmp_path / "broken.flac"),
        files[1],
        str(tmp_path / "short.wav"),
    ]
    with pytest.raises(SystemExit, match=r"^2 unreadable files skipped \(reasons above\)$"):
        run_main(transcribe, argv)
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == files
    assert err.splitlines() == [
        f"{tmp_path / 'broken.flac'}: unreadable (LibsndfileError: Error opening "
        + err.splitlines()[0].split("Error opening ", 1)[1],
        f"{tmp_path / 'short.wav'}: shorter_than_receptive_field (100 samples at 16 kHz < the encoder's "
        "400-sample receptive field)",
    ]
    with pytest.raises(SystemExit, match=r"broken.flac: unreadable"):
        run_main(transcribe, ["--strict", *argv])
    # --strict stops at the broken file, the transcript of the file read before it written.
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == files[:1]


def test_files_stream_a_few_batches_at_a_time_with_the_transcripts_of_all_at_once(checkpoint, corpus, monkeypatch):
    """With batch_size=1, files are read READ_BATCHES at a time and the first transcripts come before
    the later files are read; the whole run gives, in order, the transcripts of all files at once."""
    manifest = read_manifest(corpus)
    files = [manifest.file_path(i % len(manifest)) for i in range(2 * READ_BATCHES + 3)]
    reads, load = [], audio.load_audio
    monkeypatch.setattr(audio, "load_audio", lambda path, **kw: reads.append(path) or load(path, **kw))
    stream = transcribe_files(checkpoint, files, batch_size=1)
    first = next(stream)
    assert reads == files[:READ_BATCHES]
    results = [first, *stream]
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint)
    whole = transcription.transcribe(model, [load(f, normalize_audio=normalize) for f in files], vocabulary, 1)
    assert results == list(zip(files, whole)) and len(set(whole)) > 1


@pytest.mark.parametrize("strict", [False, True], ids=["skip", "strict"])
def test_a_bad_file_at_the_end_leaves_every_transcript_before_it_written(checkpoint, corpus, tmp_path, capsys, strict):
    """Transcripts, timestamps and alignments of the files before an unreadable last one are written,
    whether the run goes on (exit status 1 and the count) or stops there (`--strict`)."""
    manifest = read_manifest(corpus)
    (tmp_path / "broken.flac").write_bytes(b"not audio at all" * 10)
    good = [str(manifest.file_path(i % len(manifest))) for i in range(READ_BATCHES + 2)]
    error = "broken.flac: unreadable" if strict else r"^1 unreadable file skipped"
    flags = ["--strict"] if strict else []
    argv = [*flags, f"--checkpoint={checkpoint}", "--batch_size=1", *good, str(tmp_path / "broken.flac")]
    with pytest.raises(SystemExit, match=error):
        run_main(transcribe, argv)
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == good
    output = tmp_path / "timestamps.jsonl"
    with pytest.raises(SystemExit, match=error):
        run_main(transcribe, [*argv, "--timestamps=word", f"--output={output}"])
    assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == good
    # align: a manifest whose last row is the broken file.
    rows = [i % len(manifest) for i in range(READ_BATCHES + 2)]
    for i in set(rows):
        (tmp_path / manifest.paths[i]).write_bytes(manifest.file_path(i).read_bytes())
    paths = [manifest.paths[i] for i in rows]
    lengths = [manifest.num_samples[i] for i in rows]
    write_manifest(tmp_path / "late.tsv", tmp_path, [*paths, "broken.flac"], [*lengths, 32000])
    transcripts = [TRANSCRIPTS[i % len(manifest)] for i in range(len(paths))] + ["ab"]
    label_path(tmp_path / "late.tsv", "wrd").write_text("".join(f"{t}\n" for t in transcripts), encoding="utf-8")
    out = tmp_path / "align"
    with pytest.raises(SystemExit, match=error):
        run_main(
            align,
            [
                *flags,
                f"--checkpoint={checkpoint}",
                "--batch_size=1",
                f"--manifest={tmp_path / 'late.tsv'}",
                f"--out={out}",
            ],
        )
    records = [json.loads(line) for line in (out / "alignments.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [str(tmp_path / p) for p in paths]
    assert len((out / "alignments.ctm").read_text().splitlines()) == sum(len(t.split()) for t in transcripts[:-1])


def test_evaluation_in_batches_counts_the_error_rates_of_all_utterances_at_once(checkpoint, corpus, tmp_path):
    manifest = read_manifest(corpus)
    rows = [i % len(manifest) for i in range(2 * READ_BATCHES + 3)]
    write_manifest(
        tmp_path / "many.tsv", manifest.root, [manifest.paths[i] for i in rows], [manifest.num_samples[i] for i in rows]
    )
    references = [TRANSCRIPTS[i] for i in rows]
    label_path(tmp_path / "many.tsv", "wrd").write_text("".join(f"{t}\n" for t in references), encoding="utf-8")
    record = evaluate_finetuned_checkpoint(checkpoint, tmp_path / "many.tsv", batch_size=1)
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint)
    waveforms = [audio.load_audio(manifest.file_path(i), normalize_audio=normalize) for i in rows]
    hypotheses = transcription.transcribe(model, waveforms, vocabulary, 1)
    assert {k: record[k] for k in ("wer", "cer")} == error_rate_metrics(references, hypotheses, "ltr")
    assert record["num_utterances"] == len(rows)


def test_a_damaged_model_does_not_transcribe(checkpoint, corpus, tmp_path):
    damaged = tmp_path / "model"
    damaged.mkdir()
    for file in checkpoint.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    data = bytearray((damaged / PARAMS_FILE).read_bytes())
    data[-200:-136] = bytes(b ^ 0x55 for b in data[-200:-136])  # 64 bytes inside the weights
    (damaged / PARAMS_FILE).write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=rf"^{damaged / PARAMS_FILE}: damaged \(its SHA-256 differs"):
        run_main(transcribe, [f"--checkpoint={damaged}", str(read_manifest(corpus).file_path(0))])


def test_timestamps_are_json_lines_beside_the_transcripts(checkpoint, corpus, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run_main(transcribe, [f"--checkpoint={checkpoint}", "--timestamps=char", f"--output={output}", str(corpus)])
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [[r["path"], r["text"]] for r in records] == printed and len(records) == 6
    for record in records:
        chars = record["segments"]
        assert "".join(s["token"] for s in chars) == record["text"].replace(" ", "")
        assert all(0 <= s["start"] < s["end"] and 0 < s["score"] <= 1 for s in chars)
        assert all(a["end"] <= b["start"] for a, b in zip(chars, chars[1:]))
    with pytest.raises(app.UsageError, match="--timestamps writes to --output"):
        run_main(transcribe, [f"--checkpoint={checkpoint}", "--timestamps=word", str(corpus)])


def test_align_writes_the_transcripts_words_as_json_and_ctm(checkpoint, corpus, tmp_path):
    run_main(align, [f"--checkpoint={checkpoint}", f"--manifest={corpus}", f"--out={tmp_path}"])
    records = [json.loads(line) for line in (tmp_path / "alignments.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == TRANSCRIPTS
    assert [[s["token"] for s in r["segments"]] for r in records] == [t.split() for t in TRANSCRIPTS]
    ctm = [line.split() for line in (tmp_path / "alignments.ctm").read_text().splitlines()]
    assert len(ctm) == sum(len(t.split()) for t in TRANSCRIPTS)
    first = records[0]["segments"][0]
    assert ctm[0] == ["en_0", "1", f"{first['start']:.3f}", f"{first['end'] - first['start']:.3f}", "ab", ctm[0][5]]


def test_evaluate_leaves_unreadable_files_out_and_counts_them(checkpoint, corpus, tmp_path, capsys):
    manifest = read_manifest(corpus)
    (tmp_path / "broken.flac").write_bytes(b"\0" * 300)
    for i in range(3):
        (tmp_path / manifest.paths[i]).write_bytes(manifest.file_path(i).read_bytes())
    paths = [manifest.paths[0], "broken.flac", manifest.paths[1], manifest.paths[2]]
    write_manifest(
        tmp_path / "small.tsv", tmp_path, paths, [manifest.num_samples[0], 32000, *manifest.num_samples[1:3]]
    )
    label_path(tmp_path / "small.tsv", "wrd").write_text("ab cd\nbad\ne\ndea b\n", encoding="utf-8")
    argv = [f"--checkpoint={checkpoint}", f"--manifest={tmp_path / 'small.tsv'}", f"--output={tmp_path / 'eval'}"]
    with pytest.raises(SystemExit, match=r"^1 unreadable file skipped"):
        run_main(evaluate, argv)
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'broken.flac'}: unreadable")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_utterances"] == 3
    with pytest.raises(SystemExit, match="broken.flac: unreadable"):
        run_main(evaluate, ["--strict", *argv])
