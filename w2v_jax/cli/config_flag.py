"""The launchers' `--config` flag: an ml_collections config file named from any directory, its
`--config.*` overrides, and an unknown field as one line.

`--config=pretrain.py:tiny` (or `pretrain:tiny`) names a config file of the package
(`w2v_jax.configs.packaged_config`), and the repository's `--config=pretrain.py:tiny`
names the same file from anywhere; an existing file is the user's own (`resolve_config_path`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from w2v_jax.configs import packaged_config


def resolve_config_path(spec: str) -> str:
    """`path[:variant]` with the path made independent of the current directory.

    An existing file is kept as given; otherwise a config of the package with the same file name
    (`experiments/configs/pretrain.py`, `pretrain.py` or `pretrain`) is used. Anything else is
    returned unchanged (config_flags then names the missing file).
    """
    path, sep, variant = spec.partition(":")
    if os.path.isfile(path):
        return spec
    packaged = packaged_config(path)
    return f"{packaged}{sep}{variant}" if packaged else spec


def resolve_argv(name: str, argv: Sequence[str]) -> list[str]:
    """`argv` with `--NAME=spec` / `--NAME spec` resolved by `resolve_config_path`."""
    resolved = list(argv)
    for index, arg in enumerate(resolved):
        if arg.startswith(f"--{name}="):
            resolved[index] = f"--{name}=" + resolve_config_path(arg.split("=", 1)[1])
        elif arg == f"--{name}" and index + 1 < len(resolved):
            resolved[index + 1] = resolve_config_path(resolved[index + 1])
    return resolved


def define_config_flag(
    name: str, default: str, help_string: str, flag_values: flags.FlagValues, argv: Sequence[str]
) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file` (locked) on `flag_values`, with an unknown
    `--NAME.field=...` as a one-line exit.

    config_flags reads the `--NAME.*` overrides from the command line `argv` while it defines the
    flag, so an unknown field (a typo) would otherwise end in a three-part KeyError traceback. The
    default and the command line's `--NAME` are resolved with `resolve_config_path`, so the
    launchers run from any directory; parse `resolve_argv(name, argv)` with `flag_values`.
    """
    resolved = resolve_argv(name, argv)
    try:
        return config_flags.DEFINE_config_file(
            name,
            resolve_config_path(default),
            help_string,
            flag_values=flag_values,
            lock_config=True,
            sys_argv=resolved,
        )
    except (AttributeError, KeyError) as error:
        raise SystemExit(unknown_field_message(error, name, resolved)) from None


def unknown_field_message(error: BaseException, name: str, argv: Sequence[str]) -> str:
    """One line naming the override with an unknown field (and config_dict's suggestion, if any)."""
    text = str(error).replace("\\'", "'")
    field = re.search(r"'(\w+)'", text)
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    overrides = [arg.split("=", 1)[0].lstrip("-") for arg in argv if arg.startswith(f"--{name}.")]
    culprit = next((o for o in overrides if field and field.group(1) in o.split(".")), None)
    where = f"--{culprit}" if culprit else f"a --{name}.* override"
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return f"unknown config field in {where}: the config has no field {field.group(1) if field else text!r}{hint}"
