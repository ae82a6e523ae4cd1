"""The command-line programs: one module per `w2v-<name>` command (`python -m experiments.<name>` in
the repository), each defining its flags in `define_flags(flag_values, argv)` (nothing happens at
import, so every module of the package imports in one process), parsing them and calling library code.

What they share, each in its own module so that a launcher imports only what it uses:

- `launching`: `launch(main, define_flags)`, absl's `app.run` plus quiet logging through the
  progress bar, the persistent compilation cache and `--host_malloc`;
- `config_flag`: `--config`, a config file named from any directory, and its overrides;
- `run_faults`, `bad_files`: the faults a user causes as one line and an exit status: a training
  run's (`run_faults_exit`), unreadable input files (`BadFiles`);
- `checkpoint_flags`, `beam_search_flags`, `long_form_flags`, `probe_flags`: flags several launchers
  define (a checkpoint to load, the beam-search decoder, chunks of long recordings, the phone probe).

Flags are snake_case. Importing the room imports none of them: each name below is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.cli.bad_files import BadFiles
    from w2v_jax.cli.beam_search_flags import beam_search_options, define_beam_search_flags
    from w2v_jax.cli.checkpoint_flags import define_checkpoint_flags, define_ctc_checkpoint_flags
    from w2v_jax.cli.config_flag import define_config_flag, resolve_argv, resolve_config_path, unknown_field_message
    from w2v_jax.cli.launching import (
        DEFAULT_CACHE,
        configure_logging,
        define_host_malloc_flag,
        enable_compilation_cache,
        launch,
        parse_flags,
    )
    from w2v_jax.cli.long_form_flags import define_long_form_flags
    from w2v_jax.cli.probe_flags import define_probe_flags
    from w2v_jax.cli.run_faults import run_faults_exit

__all__ = [
    "DEFAULT_CACHE",
    "BadFiles",
    "beam_search_options",
    "configure_logging",
    "define_beam_search_flags",
    "define_checkpoint_flags",
    "define_config_flag",
    "define_ctc_checkpoint_flags",
    "define_host_malloc_flag",
    "define_long_form_flags",
    "define_probe_flags",
    "enable_compilation_cache",
    "launch",
    "parse_flags",
    "resolve_argv",
    "resolve_config_path",
    "run_faults_exit",
    "unknown_field_message",
]
