"""CTC fine-tuning configs: `get_config("tiny" | "mini" | "mini_scratch" | "base_10m" | ... | "large_100h")`.

Launch (any field can be overridden on the command line):

    w2v-finetune --config=finetune.py:tiny --workdir=runs/ft_tiny
    w2v-finetune --config=finetune.py:base_10m --workdir=runs/ft \
        --config.init=runs/base --config.data.train_manifest=/data/ll10m/train.tsv \
        --config.data.valid_manifest=/data/librispeech/dev_other.tsv

`init` is the pretrained checkpoint: a pretraining workdir, our folder format or a transformers
folder (empty: random initialisation, the baseline). Its architecture is kept; the `model` section's
fine-tuning fields (dropouts, masks, CTC options: `w2v_jax.finetuning.FINETUNING_FIELDS`) apply on
top, and the vocabulary sets `vocab_size` and the blank. With an empty init the whole `model`
section is the architecture.

Labels: fairseq's files beside each manifest (`X.ltr` or `X.wrd` for letters, `X.phn` for phones,
`data.labels`); the vocabulary is built from the training labels on the first run (or read from
`data.vocabulary`, or from a fine-tuned transformers init) and stored in the workdir.

`tiny` is the CPU demo and the tests' config: with no data flags it fine-tunes on the embedded
corpus's train split with letter labels and validates on its valid split. `mini` (from a
`pretrain.py:mini` checkpoint given as `init`) and `mini_scratch` (random initialisation) are the
low-resource comparison on the same data (docs/finetuning.md). The BASE / LARGE variants
are fairseq's recipes (`examples/wav2vec/config/finetuning/{base,vox}_{10m,1h,10h,100h}.yaml`):
updates, peak learning rate, tri-stage schedule (10% / 40% / 50%, final scale 0.05), Adam
(0.9, 0.98) eps 1e-8 without weight decay or clipping, feature encoder frozen (feature_grad_mult 0),
the Transformer frozen for the first `freeze_finetune_updates`, time masks 0.5-0.75 x 10, channel
masks 0.25-0.5 x 64, LayerDrop, activation dropout 0.1, CTC zero_infinity, best checkpoint by WER.
fairseq's batch is 25.6M samples per update (3.2M x 2 GPUs x 4 for BASE, 1.28M x 4 x 5 for LARGE),
about 128 LibriSpeech utterances: `train.batch_size` here.
"""

from __future__ import annotations

import ml_collections

from w2v_jax.configs import pretrain

SIZES = ("base", "large")
DATA_AMOUNTS = ("10m", "1h", "10h", "100h")
CPU_VARIANTS = ("tiny", "mini", "mini_scratch")
VARIANTS = (*CPU_VARIANTS, *(f"{size}_{amount}" for size in SIZES for amount in DATA_AMOUNTS))

# fairseq's recipes: (max_update, lr, freeze_finetune_updates, mask_prob, mask_channel_prob, layerdrop).
RECIPES = {
    "base_10m": (13_000, 5e-5, 10_000, 0.65, 0.25, 0.1),
    "base_1h": (13_000, 5e-5, 10_000, 0.65, 0.25, 0.1),
    "base_10h": (20_000, 5e-5, 10_000, 0.65, 0.5, 0.05),
    "base_100h": (80_000, 3e-5, 0, 0.65, 0.5, 0.1),
    "large_10m": (13_000, 1e-4, 10_000, 0.65, 0.25, 0.1),
    "large_1h": (13_000, 3e-4, 10_000, 0.75, 0.25, 0.1),
    "large_10h": (20_000, 1e-4, 10_000, 0.75, 0.25, 0.1),
    "large_100h": (80_000, 3e-5, 10_000, 0.5, 0.5, 0.1),
}


# The CPU variants on the embedded corpus (about 13 min of letters): batches of 8 at one padded length
# (6.5 s; the corpus's utterances are 3.2 s to 6.4 s), so one compile; validation every 100 updates;
# light masking, no LayerDrop.
_CPU = {
    "model.mask_time_min_masks": 0,
    "model.layerdrop": 0.0,
    "model.activation_dropout": 0.0,
    "train.batch_size": 8,
    "train.log_every": 20,
    "train.eval_every": 100,
    "train.checkpoint_every": 100,
    "train.best_metric": "cer",
    "data.min_sample_size": 48_000,
    "data.max_sample_size": 104_000,
    "data.num_buckets": 2,
}
# The low-resource comparison in miniature on the `mini` pretraining model: fine-tuned from a
# pretrained checkpoint (`mini`: fairseq's recipe in small, the feature encoder frozen and the
# Transformer frozen for the first half, so that the head learns on the pretrained features before
# they move) or from random initialisation (`mini_scratch`: every part trains from the first
# update), for the same 600 updates.
_MINI = {
    **_CPU,
    "model.mask_time_prob": 0.25,
    "model.mask_time_length": 5,
    "model.mask_feature_prob": 0.1,
    "model.mask_feature_length": 16,
    "train.num_steps": 600,
    "train.learning_rate": 1e-3,
    "train.freeze_finetune_updates": 300,
}
OVERRIDES: dict[str, dict[str, object]] = {
    # The CPU demo and the tests' config on the tiny pretraining model (2 x 32 Transformer, group-norm
    # conv stack). The conv encoder trains (a briefly pretrained tiny one needs to adapt); the
    # Transformer is frozen for the first 100 updates while the head learns on its features: from
    # the main command's 300-update tiny pretraining this leaves CTC's all-blank plateau within the
    # 300 updates (trained from the first update, it does not).
    "tiny": {
        **_CPU,
        "model.mask_time_prob": 0.05,
        "model.mask_time_length": 4,
        "model.mask_feature_prob": 0.0,
        "model.mask_feature_length": 4,
        "model.feature_grad_mult": 1.0,
        "train.num_steps": 300,
        "train.learning_rate": 3e-3,
        "train.freeze_finetune_updates": 100,
        "train.log_every": 10,
        "train.eval_every": 50,
    },
    "mini": _MINI,
    "mini_scratch": {
        **_MINI,
        "model.feature_grad_mult": 1.0,
        "train.freeze_finetune_updates": 0,
        "train.learning_rate": 2e-3,
    },
    **{
        name: {
            "train.num_steps": num_steps,
            "train.learning_rate": lr,
            "train.freeze_finetune_updates": freeze,
            "model.mask_time_prob": mask_prob,
            "model.mask_feature_prob": channel_prob,
            "model.layerdrop": layerdrop,
            "train.precision": "bfloat16" if name.startswith("large") else "float32",
            "train.remat": name.startswith("large"),
        }
        for name, (num_steps, lr, freeze, mask_prob, channel_prob, layerdrop) in RECIPES.items()
    },
}


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    """The resolved config of one variant (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown finetune config variant {variant!r}; choose one of {VARIANTS}")
    config = _base_config(pretrain.get_config(variant.split("_")[0]))
    config.variant = variant
    config.update_from_flattened_dict(OVERRIDES[variant])
    return config


def _base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A pretrain config turned into fairseq's CTC fine-tuning recipe (the sections the training loop
    shares with pretraining: mesh, distributed, data, train)."""
    config.init = ""  # pretrained checkpoint; "": random initialisation
    del config["init_fresh_heads"]  # pretraining's: fine-tuning has no pretraining heads

    model = config.model
    # fairseq's wav2vec_ctc defaults: no dropout but activation dropout 0.1 and LayerDrop; the
    # feature encoder frozen; CTC blank, vocabulary and sizes come from the vocabulary.
    model.hidden_dropout = 0.0
    model.attention_dropout = 0.0
    model.feat_proj_dropout = 0.0
    model.final_dropout = 0.0
    model.activation_dropout = 0.1
    model.feature_grad_mult = 0.0
    model.feature_penalty_weight = 0.0
    model.mask_time_length = 10
    model.mask_time_min_masks = 2
    model.mask_feature_length = 64
    model.mask_feature_min_masks = 0
    model.ctc_loss_reduction = "sum"
    model.ctc_zero_infinity = True

    train = config.train
    for name in ("max_gumbel_temperature", "min_gumbel_temperature", "gumbel_temperature_decay"):
        del train[name]
    train.lr_schedule = "tri_stage"
    train.phase_ratios = (0.1, 0.4, 0.5)
    train.init_lr_scale = 0.01
    train.final_lr_scale = 0.05
    train.adam_eps = 1e-8
    train.weight_decay = 0.0
    train.max_grad_norm = 0.0  # fairseq's fine-tuning recipes don't clip
    train.freeze_finetune_updates = 0  # updates during which only the CTC head learns
    train.eval_every = 1000  # validation period (a multiple of log_every); 0: none
    train.eval_batch_size = 8
    train.best_metric = "wer"  # wer | cer (letters) or per (phones): the best checkpoint's metric
    train.batch_size = 128
    train.log_every = 200
    train.checkpoint_every = 1000

    data = config.data
    data.valid_manifest = ""  # "": the embedded corpus's valid split
    data.labels = "ltr"  # ltr (letters, from X.ltr or X.wrd) | phn (phones, X.phn)
    data.vocabulary = ""  # a vocab.json (or a folder with one); "": built from the training labels
    data.pad = True  # labelled audio is padded, never cropped
    data.num_buckets = 8  # padded lengths: geometric between min_sample_size and max_sample_size
    # Pretraining's only: token budgets (batches of train.batch_size utterances here) and several corpora.
    for name in ("max_tokens", "train_manifests", "train_weights", "sampling_alpha"):
        del data[name]
    data.min_sample_size = 0
    data.max_sample_size = 560_000  # 35 s: LibriSpeech's longest; longer utterances are skipped
    return config
