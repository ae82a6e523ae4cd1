"""Forced alignment of known transcripts: word, char or phone times of a manifest's recordings.

    w2v-align --checkpoint=runs/ft_mini --manifest=data/valid.tsv --out=runs/align
    w2v-align --checkpoint=runs/ft_mini_phn --labels=phn --manifest=valid.tsv --out=DIR

Takes the audio of `--manifest` and its transcripts (`.ltr`, else `.wrd`, beside it; `.phn` with
`--labels=phn`) and writes `--out`/alignments.jsonl (one line per recording: `{"path", "text",
"segments": [{"token", "start", "end", "score"}]}`, seconds) and `--out`/alignments.ctm
(`utterance channel start duration token score`), for example to cut long recordings into
utterances. `--level` is word (default for letters), char or phone (default for phones). Recordings
of any length (`--chunk_s`); unreadable files are reported on stderr and counted in the exit
status as `transcribe` does (`--strict`: stop at the first one). Recordings are read, aligned and
written a few batches at a time, as `transcribe` does: the alignments made before an error are kept.
All logic: `w2v_jax.asr.timestamps.align_manifest`.
"""

import pathlib
from collections.abc import Iterable, Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr import timestamps
from w2v_jax.asr.alignment import Segment
from w2v_jax.cli.bad_files import BadFiles
from w2v_jax.cli.checkpoint_flags import define_ctc_checkpoint_flags
from w2v_jax.cli.launching import launch
from w2v_jax.cli.long_form_flags import define_long_form_flags


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        **define_ctc_checkpoint_flags(fv),
        manifest=flags.DEFINE_string(
            "manifest", None, "Manifest with transcripts beside it.", required=True, flag_values=fv
        ),
        out=flags.DEFINE_string("out", None, "Output folder.", required=True, flag_values=fv),
        level=flags.DEFINE_enum(
            "level",
            None,
            list(timestamps.LEVELS),
            "Segments: word, char or phone (default by --labels).",
            flag_values=fv,
        ),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Utterances (or chunks) per forward pass.", flag_values=fv),
        **define_long_form_flags(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    bad = BadFiles()
    level = args.level.value or ("word" if args.labels.value == "ltr" else "phone")
    try:
        results, seconds = timestamps.align_manifest(
            args.checkpoint.value,
            args.manifest.value,
            args.labels.value,
            level,
            step=args.step.value,
            batch_size=args.batch_size.value,
            chunk_s=args.chunk_s.value,
            stride_s=args.stride_s.value,
            on_bad_file=None if args.strict.value else bad.report,
        )
        out = pathlib.Path(args.out.value)
        out.mkdir(parents=True, exist_ok=True)
        count = write_alignments(results, seconds, out)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(f"aligned {count} recordings: wrote {out}/alignments.jsonl and alignments.ctm")
    bad.exit_if_any()


def write_alignments(
    results: Iterable[tuple[pathlib.Path, str, list[Segment]]], seconds: float, out: pathlib.Path
) -> int:
    """Each recording's lines in `out`/alignments.jsonl and alignments.ctm as it comes (flushed, so
    that an error later leaves them written); returns how many recordings."""
    count = 0
    with (
        (out / "alignments.jsonl").open("w", encoding="utf-8") as jsonl,
        (out / "alignments.ctm").open("w", encoding="utf-8") as ctm,
    ):
        for path, text, found in results:
            jsonl.write(timestamps.json_line(path, text, found, seconds) + "\n")
            timestamps.write_ctm(ctm, timestamps.utterance_id(path), found, seconds)
            jsonl.flush()
            ctm.flush()
            count += 1
    return count


def run() -> None:
    """The `w2v-align` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
