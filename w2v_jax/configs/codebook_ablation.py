"""Codebook-size ablation on the mini model: G in {1, 2} groups x V in {4, 16, 64, 320} codewords per
group, each point trained with two seeds.

    w2v-sweep --config=codebook_ablation.py --workdir=runs/codebook
    w2v-sweep --config=codebook_ablation.py --workdir=runs/codebook \
        --print_commands                       # one w2v-pretrain command per run
    w2v-sweep --config=codebook_ablation.py:tiny --workdir=... \
        --config.train.num_steps=300 --config.grid.model.num_codevector_groups='(2,)'

The config is the variant's pretrain config (default mini, the CPU research model) plus `grid`, which mirrors the
config's structure with the values to try at its leaves; every field, the grid's included, can be overridden on the
command line. The grid spans codebook sizes G x V from 4 (a collapsed codebook: many distractors share their target's
codewords and drop out of the contrastive task, which raises its chance level) to 640 (far more codewords than the
corpus has phones). `train.seed` is a grid axis too: each point is trained with every seed, and the results report the
mean and min-max over seeds (`w2v_jax.research.sweep`). Every run trains 1000 updates, half of mini's default run,
which is enough for every point to leave chance; the 16 runs and their phone probes fit a ~2 hour budget on a 2-core
CPU machine (docs/research.md has the time and the result). codevector_dim must stay divisible by every G (tiny: 16;
mini: 64; base: 256).
"""

import ml_collections

from w2v_jax.configs import pretrain


def get_config(variant: str = "mini") -> ml_collections.ConfigDict:
    """The variant's pretrain config with the codebook grid and two seeds per point."""
    config = pretrain.get_config(variant)
    config.train.num_steps = 1000
    config.grid = ml_collections.ConfigDict()
    config.grid.model = ml_collections.ConfigDict()
    config.grid.model.num_codevector_groups = (1, 2)
    config.grid.model.num_codevectors_per_group = (4, 16, 64, 320)
    config.grid.train = ml_collections.ConfigDict()
    config.grid.train.seed = (0, 1)
    return config
