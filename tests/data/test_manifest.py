"""Manifests, folder scans and the manifests of a folder (w2v_jax.data.manifest)."""

import numpy as np
import pytest
import soundfile

from w2v_jax.data import audio, manifest, skips


def _write(path, num_samples: int, rate: int = 16_000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = 0.1 * np.random.default_rng(num_samples).standard_normal((num_samples, channels)).astype(np.float32)
    soundfile.write(path, data, rate)


def test_round_trip_with_relative_root_resolves_beside_the_manifest(tmp_path, monkeypatch):
    _write(tmp_path / "corpus" / "a" / "x.flac", 1000)
    manifest.write_manifest(tmp_path / "corpus" / "m.tsv", ".", ["a/x.flac", "b.wav"], [1000, 7])
    monkeypatch.chdir(tmp_path)  # the root must not depend on the working directory
    loaded = manifest.read_manifest(tmp_path / "corpus" / "m.tsv")
    assert loaded.root == (tmp_path / "corpus").resolve()
    assert loaded.paths == ("a/x.flac", "b.wav")
    np.testing.assert_array_equal(loaded.num_samples, [1000, 7])
    assert loaded.file_path(0).is_file()


def test_absolute_root_and_fingerprint_ignores_root(tmp_path):
    (tmp_path / "m1.tsv").write_text("/data/one\nx.wav\t10\ny.wav\t20\n")
    (tmp_path / "m2.tsv").write_text("/data/two\nx.wav\t10\ny.wav\t20\n\n")
    (tmp_path / "m3.tsv").write_text("/data/two\nx.wav\t10\ny.wav\t21\n")
    one, two, three = (manifest.read_manifest(tmp_path / f"m{i}.tsv") for i in (1, 2, 3))
    assert str(one.root) == "/data/one"
    assert one.fingerprint() == two.fingerprint() != three.fingerprint()


@pytest.mark.parametrize("entry", ["../x.wav", "a/../../x.wav", "/etc/x.wav"])
def test_paths_escaping_the_root_are_refused_unless_allowed(tmp_path, entry):
    (tmp_path / "m.tsv").write_text(f".\nok.wav\t10\n{entry}\t10\n")
    with pytest.raises(ValueError, match=r"m.tsv:3: .*escapes the manifest root"):
        manifest.read_manifest(tmp_path / "m.tsv")
    allowed = manifest.read_manifest(tmp_path / "m.tsv", allow_outside_root=True)
    assert allowed.paths[1] == entry


@pytest.mark.parametrize(
    "body,message",
    [
        ("", "empty manifest"),
        (".\nx.wav 10\n", "expected 'relative/path<TAB>num_samples'"),
        (".\nx.wav\tten\n", "not an integer"),
        (".\nx.wav\t-3\n", "negative"),
    ],
)
def test_malformed_manifests_name_the_problem(tmp_path, body, message):
    (tmp_path / "m.tsv").write_text(body)
    with pytest.raises(ValueError, match=message):
        manifest.read_manifest(tmp_path / "m.tsv")


def test_scan_folder_probes_lengths_and_records_bad_files(tmp_path):
    _write(tmp_path / "s1" / "c1" / "a.flac", 5000)
    _write(tmp_path / "s1" / "c1" / "b.WAV", 4410, rate=44_100, channels=2)
    _write(tmp_path / "s2" / "c.ogg", 3000)  # not an exact-header format: decoded to measure
    (tmp_path / "s2" / "notes.txt").write_text("not audio")
    (tmp_path / "s2" / "junk.wav").write_bytes(b"\x00garbage" * 50)
    _write(tmp_path / "s2" / "empty.flac", 0)
    scanned = manifest.scan_folder(tmp_path, num_workers=2)
    assert scanned.paths == ("s1/c1/a.flac", "s1/c1/b.WAV", "s2/c.ogg", "s2/empty.flac", "s2/junk.wav")
    np.testing.assert_array_equal(scanned.num_samples, [5000, audio.resampled_length(4410, 44_100), 3000, 0, 0])
    assert scanned.num_samples[2] == audio.read_audio(tmp_path / "s2" / "c.ogg").samples.shape[0]
    assert {i: reason for i, (reason, _) in scanned.known_bad.items()} == {3: skips.EMPTY, 4: skips.UNREADABLE}


def test_scan_folder_without_audio_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no audio files"):
        manifest.scan_folder(tmp_path)


def test_prepare_manifests_writes_train_and_valid(tmp_path):
    names = [f"spk{s}/ch{c}/{s}-{c}-{u}.flac" for s in range(3) for c in range(2) for u in range(5)]
    for i, name in enumerate(names):
        _write(tmp_path / "LibriSpeech" / name, 1000 + i)
    (tmp_path / "LibriSpeech" / "spk0" / "bad.flac").write_bytes(b"fLaC" + b"\x01" * 40)
    out = tmp_path / "manifests" / "train.tsv"
    lines = manifest.prepare_manifests(tmp_path / "LibriSpeech", out, valid_fraction=0.2, num_workers=2)
    train = manifest.read_manifest(out)
    valid = manifest.read_manifest(tmp_path / "manifests" / "valid.tsv")
    assert train.root == valid.root == (tmp_path / "LibriSpeech").resolve()
    assert len(valid) == 6 and len(train) == 24
    assert sorted(train.paths + valid.paths) == sorted(names)
    for part in (train, valid):
        for path, length in zip(part.paths, part.num_samples):
            assert soundfile.info(part.file_path(part.paths.index(path))).frames == length
    assert lines[-1] == "skipped 1 unusable files: unreadable: 1"
    with pytest.raises(skips.BadInputError, match="bad.flac"):
        manifest.prepare_manifests(tmp_path / "LibriSpeech", out, strict=True)
    with pytest.raises(ValueError, match="valid fraction"):
        manifest.prepare_manifests(tmp_path / "LibriSpeech", out, valid_fraction=1.0)


def test_valid_path_naming(tmp_path):
    assert manifest.valid_manifest_path(tmp_path / "train.tsv") == tmp_path / "valid.tsv"
    assert manifest.valid_manifest_path(tmp_path / "ls960.tsv") == tmp_path / "ls960_valid.tsv"


def test_manifest_with_only_its_root_line_is_refused(tmp_path):
    (tmp_path / "m.tsv").write_text(".\n\n")
    with pytest.raises(ValueError, match=r"m.tsv: the manifest lists no files \(only its root line '.'\)"):
        manifest.read_manifest(tmp_path / "m.tsv")


@pytest.mark.parametrize("link", ["file", "folder"])
def test_symlinks_leaving_the_root_are_refused_unless_allowed(tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "ok.wav").write_bytes(b"RIFF")
    if link == "file":
        (root / "in" / "x.wav").symlink_to(outside / "secret.wav")
        entry = "in/x.wav"
    else:
        (root / "linked").symlink_to(outside)
        entry = "linked/secret.wav"
    (root / "m.tsv").write_text(f".\nin/ok.wav\t10\n{entry}\t10\n")
    with pytest.raises(ValueError, match=f"entry '{entry}' leads outside the manifest root .* symbolic link"):
        manifest.read_manifest(root / "m.tsv")
    assert manifest.read_manifest(root / "m.tsv", allow_outside_root=True).paths[1] == entry
    # A link that stays inside the root is fine.
    (root / "in" / "x.wav").unlink(missing_ok=True)
    (root / "in" / "alias.wav").symlink_to(root / "in" / "ok.wav")
    (root / "m.tsv").write_text(".\nin/ok.wav\t10\nin/alias.wav\t10\n")
    assert manifest.read_manifest(root / "m.tsv").paths == ("in/ok.wav", "in/alias.wav")
