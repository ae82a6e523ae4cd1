"""wav2vec 2.0 pretraining configs: `get_config("tiny" | "mini" | "small" | "base" | "large")`.

Launch (any field can be overridden on the command line):

    w2v-pretrain --config=pretrain.py:tiny --workdir=runs/tiny
    w2v-pretrain --config=pretrain.py:base --workdir=runs/base \
        --config.train.batch_size=64 --config.mesh.param_sharding=fsdp --config.mesh.fsdp=8

`init` continues the pretraining of a checkpoint (docs/continued_pretraining.md): its weights and
architecture, this config's training fields, optimizer and schedules from step 0.

    w2v-pretrain --config=pretrain.py:base --workdir=runs/base_nl --config.init=wav2vec_small.pt \
        --config.data.train_manifest=/data/nl/train.tsv --config.train.learning_rate=1e-4

`model.*` are `Wav2Vec2Config`'s fields (transformers' names); `train.*` the optimisation (fairseq's
recipe: Adam 0.9/0.98, eps 1e-6, wd 0.01, linear warmup then polynomial decay); `data.*` the input
pipeline (an empty `train_manifest` means the corpus embedded in the package); `mesh.*` the device
mesh and parameter sharding; `distributed.*` multi-host start-up (empty: single process or
auto-detected on TPU pods / SLURM).

tiny is the main command's demo and the tests' config: a 2-layer 32-dim model that trains on the embedded corpus in a
few CPU minutes; mini is the CPU research model (docs/research.md). base and large follow fairseq's LibriSpeech /
LV-60 recipes (update counts, peak learning rates, crops, Gumbel schedule); their batch sizes are per update, in
utterances (fairseq counts samples: 1.4M samples per GPU x 64 GPUs for BASE, about 560 crops of 250k samples, reached
here with `train.grad_accum_steps`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.audio import SAMPLE_RATE

# Each variant: `Wav2Vec2Config.preset(variant)` as the model and BASE's recipe (`_base_config`), with
# these fields changed.
OVERRIDES: dict[str, dict[str, object]] = {
    # A short, meaningful CPU run on the embedded corpus: contrastive accuracy leaves chance
    # (1 / (1 + num_negatives)) within ~100 updates. BASE's feature penalty (10 x mean z^2) and 0.1
    # encoder gradient keep this 32-channel encoder from learning that fast, so tiny trains like
    # LARGE and transformers: no penalty, the whole gradient.
    "tiny": {
        "model.feature_penalty_weight": 0.0,
        "model.feature_grad_mult": 1.0,
        "train.batch_size": 8,
        "train.num_steps": 300,
        "train.learning_rate": 2e-3,
        "train.warmup_steps": 30,
        "train.gumbel_temperature_decay": 0.995,
        "train.log_every": 10,
        "train.checkpoint_every": 100,
        "train.eval_every": 100,
        "data.max_sample_size": 32_000,
        "data.min_sample_size": SAMPLE_RATE,  # one second
    },
    # The CPU research model on the embedded corpus, as tiny without penalty.
    "mini": {
        "model.feature_penalty_weight": 0.0,
        "model.feature_grad_mult": 1.0,
        "train.batch_size": 8,
        "train.num_steps": 2000,
        "train.learning_rate": 2e-3,
        "train.warmup_steps": 100,
        "train.gumbel_temperature_decay": 0.999,
        "train.log_every": 50,
        "train.checkpoint_every": 500,
        "train.eval_every": 500,
        "data.max_sample_size": 48_000,
        "data.min_sample_size": SAMPLE_RATE,  # one second
    },
    "small": {
        "train.batch_size": 16,
        "train.num_steps": 50_000,
        "train.warmup_steps": 4_000,
        "train.eval_every": 1_000,
        "data.max_sample_size": 160_000,
    },
    # fairseq's wav2vec2_base_librispeech: 400k updates, peak 5e-4, 32k warmup, crops 250k.
    "base": {"train.batch_size": 64},
    # fairseq's wav2vec2_large_librivox: 1M updates, 32k warmup, crops 320k, temperature 2 -> 0.1.
    "large": {
        "train.batch_size": 64,
        "train.num_steps": 1_000_000,
        "train.learning_rate": 5e-3,
        "train.min_gumbel_temperature": 0.1,
        "train.precision": "bfloat16",
        "train.remat": True,
        "data.max_sample_size": 320_000,
    },
}
VARIANTS = tuple(OVERRIDES)


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    """The resolved config of one variant (see the module docstring)."""
    if variant not in OVERRIDES:
        raise ValueError(f"unknown pretrain config variant {variant!r}; choose one of {VARIANTS}")
    config = _base_config(Wav2Vec2Config.preset(variant))
    config.variant = variant
    config.update_from_flattened_dict(OVERRIDES[variant])
    return config


def _base_config(model: Wav2Vec2Config) -> ml_collections.ConfigDict:
    """fairseq's BASE pretraining recipe around `model`."""
    config = ml_collections.ConfigDict()
    config.variant = ""
    # Continued pretraining (docs/continued_pretraining.md): the checkpoint every weight starts from
    # (a pretraining workdir, our folder, a transformers folder, a fairseq or fairseq2 .pt; "": random
    # initialisation). Its architecture replaces the `model` section's (`config.ARCHITECTURE_FIELDS`);
    # the training fields, the optimizer, the schedules and the update counter are this config's.
    config.init = ""
    # Start the pretraining heads (quantizer, project_q, project_hid) fresh on init's encoder: needed
    # for a source without them (a transformers Wav2Vec2Model, a CTC model).
    config.init_fresh_heads = False
    config.model = ml_collections.ConfigDict({f.name: getattr(model, f.name) for f in dataclasses.fields(model)})

    config.train = ml_collections.ConfigDict()
    train = config.train
    train.seed = 0
    train.batch_size = 8  # global, utterances per update
    train.grad_accum_steps = 1  # micro-batches per update (the batch is split, gradients summed)
    train.num_steps = 400_000
    train.learning_rate = 5e-4  # peak
    train.warmup_steps = 32_000
    train.lr_schedule = "polynomial"  # polynomial | linear | cosine | constant
    train.lr_end = 0.0
    train.lr_power = 1.0
    train.adam_b1 = 0.9
    train.adam_b2 = 0.98
    train.adam_eps = 1e-6
    train.weight_decay = 0.01
    train.max_grad_norm = 10.0  # <= 0: no clipping
    # Gumbel temperature max(start * decay**step, end) (transformers' example script's names).
    train.max_gumbel_temperature = 2.0
    train.min_gumbel_temperature = 0.5
    train.gumbel_temperature_decay = 0.999995
    train.precision = "float32"  # float32 | bfloat16 (bf16 compute, float32 master weights)
    train.remat = False  # recompute the conv encoder and Transformer layers in the backward pass (less memory)
    train.log_every = 100
    train.checkpoint_every = 1000
    train.keep_checkpoints = 3
    train.async_checkpointing = True
    # A workdir whose checkpoints were all moved aside as corrupt (<step>.corrupt) is refused; True
    # starts it over from step 0 beside them (they are never deleted).
    train.start_over_corrupt = False
    train.max_consecutive_nonfinite = 10  # stop the run after this many skipped updates in a row
    train.plot = True  # loss-curve PNG at the end
    # Failure detectors over the logged records (w2v_jax/training/health.py; pretraining's own in
    # w2v_jax/pretraining/task.py): "warn" logs a line naming the condition, its evidence and the fix,
    # and adds `health` to the record; "stop" also exits 1 after saving that step's checkpoint; "off".
    # A condition counts once it holds on health_window consecutive logged records; the gradient norm
    # and the loss are compared with their medians over health_recent logged records (one spike moves
    # no median).
    train.health = "warn"
    train.health_window = 3
    train.health_recent = 5
    # Validation every eval_every updates (0: off; a multiple of log_every): valid_* keys in that
    # step's metrics record, on data.valid_manifest (w2v_jax/pretraining/evaluator.py).
    train.eval_every = 0

    config.data = ml_collections.ConfigDict()
    data = config.data
    data.train_manifest = ""  # "": the embedded corpus (w2v_jax.data.default_manifest())
    # Several corpora (replaces train_manifest when non-empty): each epoch draws from each with
    # probability proportional to train_weights, or (empty) to its size**sampling_alpha (XLS-R: 0.5;
    # 0: natural proportions, every utterance once an epoch). Metrics gain data_share_<manifest name>.
    data.train_manifests = ()
    data.train_weights = ()
    data.sampling_alpha = 0.0
    data.valid_manifest = ""  # "": the embedded corpus's valid split (used when train.eval_every > 0)
    data.max_sample_size = 250_000
    data.min_sample_size = 32_000
    data.pad = False  # False: crop each batch to its shortest utterance (fairseq's default)
    # Token budget (fairseq's max_tokens): samples per update in all (every device and micro-batch);
    # each length bucket's global batch is max_tokens // length rows, rounded down to a multiple of
    # devices x grad_accum_steps (one compile per bucket), and train.batch_size is not used. 0: a
    # fixed train.batch_size. fairseq BASE: 1.4M per GPU x 64 GPUs = 89.6M.
    data.max_tokens = 0
    data.num_buckets = 8  # crop / pad lengths: geometric between min_sample_size and max_sample_size
    data.normalize = True
    data.num_workers = 0
    # Bad input: strict stops at the first unusable file; otherwise unusable files are skipped and
    # counted until they exceed max_skip_fraction of the files read (see w2v_jax/data/skips.py).
    data.strict = False
    data.max_skip_fraction = 0.05
    data.allow_outside_root = False  # accept manifest paths outside its root (absolute, '..', symlinks)

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: every device not used by fsdp
    config.mesh.fsdp = 1
    config.mesh.param_sharding = "replicated"  # replicated | fsdp
    config.mesh.fsdp_min_size = 2**14  # under fsdp, smaller arrays stay replicated

    config.distributed = ml_collections.ConfigDict()
    config.distributed.coordinator_address = ""  # host:port of process 0; "" = auto-detect / single
    config.distributed.num_processes = 0
    config.distributed.process_id = -1
    return config
