"""Experiment configs: `get_config(variant)` files for ml_collections config flags.

- `pretrain`: the pretraining variants (tiny, mini, small, base, large);
- `finetune`: the CTC fine-tuning variants;
- `codebook_ablation`: a sweep (a grid of pretraining variants).

They live in the package, so the launchers find them from any directory (`packaged_config`; the
`--config` flag itself is `w2v_jax.cli.config_flag`'s).
"""

from __future__ import annotations

import pathlib

from w2v_jax.lazy_exports import lazy_exports

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def packaged_config(path: str) -> pathlib.Path | None:
    """The config file of this package with `path`'s file name (`experiments/configs/pretrain.py`,
    `pretrain.py` or `pretrain`), or None: no such file (or a private one, `_name.py`)."""
    name = pathlib.Path(path).name
    name = name if name.endswith(".py") else name + ".py"
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_file() and not name.startswith("_") else None


with lazy_exports(globals()):
    from w2v_jax.configs import codebook_ablation, finetune, pretrain

__all__ = ["PACKAGE_DIR", "codebook_ablation", "finetune", "packaged_config", "pretrain"]
