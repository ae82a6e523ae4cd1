"""Codebook-size ablation: G in {1, 2, 4} groups x V in {80, 160, 320, 640} codewords per group.

    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py --workdir=runs/codebook
    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py --workdir=runs/codebook \
        --print-commands                       # one experiments.pretrain command per point
    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py:small --workdir=... \
        --config.train.num_steps=2000 --config.grid.model.num_codevector_groups='(2,)'

The config is the base pretrain config of the variant (default tiny: 12 points of 300 steps on
the embedded corpus, under a minute each on a 2-core CPU) plus `grid`, which mirrors the config's structure
with the values to try at its leaves; every field, the grid's included, can be overridden on the
command line. codevector_dim must stay divisible by every G (tiny: 16; base: 256).
"""

import ml_collections

from w2v_jax.configs import pretrain


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    """The variant's pretrain config with the codebook grid."""
    config = pretrain.get_config(variant)
    config.grid = ml_collections.ConfigDict()
    config.grid.model = ml_collections.ConfigDict()
    config.grid.model.num_codevector_groups = (1, 2, 4)
    config.grid.model.num_codevectors_per_group = (80, 160, 320, 640)
    return config
