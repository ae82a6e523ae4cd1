"""Unreadable input files of the launchers that read many and go on without them (`BadFiles`)."""

from __future__ import annotations

import pathlib
import sys


class BadFiles:
    """Unreadable input files of a launcher that goes on without them: each one's line on stderr as
    it is met (`report`, an `on_bad_file` callback), then `exit_if_any` ends with status 1 and the count."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, path: pathlib.Path, reason: str) -> None:
        del path  # the reason names it
        self.count += 1
        print(reason, file=sys.stderr, flush=True)

    def exit_if_any(self) -> None:
        if self.count:
            raise SystemExit(f"{self.count} unreadable file{'s' if self.count > 1 else ''} skipped (reasons above)")
