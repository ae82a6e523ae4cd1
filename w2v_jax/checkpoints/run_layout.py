"""The file names of a training run's directory (`--workdir`), shared by the loop that writes it
and by every reader of it (`load_model`, conversion, evaluation, sweeps).

    WORKDIR/
      lock                     the writer's flock (`training.workdir.WorkdirLock`)
      config.json              the resolved run config
      config_changes.jsonl     settings a resumed run changed
      checkpoints/<step>/      orbax checkpoints of the run state (`checkpoints.checkpointer`)
      metrics.jsonl            the logged metrics (`training.metrics`, which names it)
      model_config.json        fine-tuning: the model's config (the pretrained architecture plus the
                               vocabulary's size and blank), which the run config's `model` is not;
                               continued pretraining (`init`): the init checkpoint's architecture
                               with the run config's training fields
      best/                    fine-tuning: the best model so far by the validation metric (our
                               folder format, `checkpoints.folder`)
      best.json                fine-tuning: {"step", "metric", "value", "history"} of that model
      vocab.json, ...          fine-tuning: the vocabulary and processor files (`checkpoints.hf`)
"""

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"
BEST_MODEL_DIR = "best"
BEST_RECORD_FILE = "best.json"
