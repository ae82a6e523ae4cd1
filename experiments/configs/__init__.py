"""Experiment configs: `get_config(variant)` files for ml_collections config flags."""

from __future__ import annotations

import re
import sys

from absl import flags
from ml_collections import config_flags

# Flags defined through `define_config_flag` belong to the launcher that calls it, as with absl's own.
flags.disclaim_key_flags()


def define_config_flag(name: str, default: str, help_string: str) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file` (locked), with an unknown `--NAME.field=...` as a one-line exit.

    config_flags applies the command line's overrides while it defines the flag, at import, so an
    unknown field (a typo) would otherwise end in a three-part KeyError traceback.
    """
    try:
        return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
    except (AttributeError, KeyError) as error:
        raise SystemExit(unknown_field_message(error, name, sys.argv)) from None


def unknown_field_message(error: BaseException, name: str, argv: list[str]) -> str:
    """One line naming the override with an unknown field (and config_dict's suggestion, if any)."""
    text = str(error).replace("\\'", "'")
    field = re.search(r"'(\w+)'", text)
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    overrides = [arg.split("=", 1)[0].lstrip("-") for arg in argv if arg.startswith(f"--{name}.")]
    culprit = next((o for o in overrides if field and field.group(1) in o.split(".")), None)
    where = f"--{culprit}" if culprit else f"a --{name}.* override"
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return f"unknown config field in {where}: the config has no field {field.group(1) if field else text!r}{hint}"
