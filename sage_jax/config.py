"""Training configuration: every field, its default, and validation.

The defaults are the paper's CIFAR-10 run with the released code's settings
(spec §3); the files in configs/ start from `base_config()` and change what
differs. Each training method's hyperparameters live in their own block,
`config.<method>`, with the published defaults (`sage_jax.methods`).
`validate_config` checks every field at start-up and raises a ValueError that
names the field.
"""
from typing import Any

import ml_collections

from sage_jax import input_pipeline
from sage_jax import losses
from sage_jax import methods
from sage_jax import models
from sage_jax.methods import base as rules

METHODS = methods.METHOD_NAMES
LOSSES = tuple(losses.LOSS_FNS)
NONFINITE_POLICIES = ("stop", "skip")


def base_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 PreActResNet18 SAGE run (300 epochs, batch 100)."""
  config = ml_collections.ConfigDict()
  config.method = "sage"              # one of sage_jax.methods.METHOD_NAMES

  config.model = ml_collections.ConfigDict()
  config.model.name = "preactresnet18"
  config.model.width = 0              # 0 = the architecture's default width

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar10"     # cifar10 | cifar100 | image_folder
  config.dataset.data_dir = ""        # "" = tfds's default data directory
  config.dataset.download = True      # tfds: download a missing dataset if online

  config.batch_size = 100             # global, split over all devices
  config.eval_batch_size = 500        # global; the last test batch is padded
  config.num_epochs = 300
  config.num_train_steps = -1         # > 0 overrides num_epochs

  config.learning_rate = 0.2
  config.lr_boundaries = (100, 200)   # epochs at which lr *= lr_decay
  config.lr_decay = 0.1
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4          # coupled: added to the gradient
  config.loss = "bce_softmax"         # bce_softmax | softmax_xent

  # One block per method with hyperparameters: config.sage, config.mixup, ...
  for name, method in methods.REGISTRY.items():
    if method.default_config is not None:
      config[name] = method.default_config()

  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = -1        # -1 = once per epoch
  config.checkpoint_every_steps = -1  # -1 = once per epoch
  config.half_precision = False       # bf16 compute (GPU/TPU); fp32 as the paper
  config.cross_device_batch_norm = False  # BN batch statistics over all devices
  # CPU meshes only: XLA's Eigen convolutions instead of YNNPACK's (about 1.7x
  # faster steps on x86; float32 rounding differs, ~1e-6 relative).
  config.xla_cpu_eigen_convolutions = True
  config.multi_host = False           # call jax.distributed.initialize()
  # multi_host: seconds without a heartbeat after which a process counts as
  # dead and every other process stops (instead of waiting in a collective).
  config.heartbeat_timeout_seconds = 100
  config.num_devices = 0              # 0 = all devices (of all hosts)
  # A step whose loss, metrics, gradient or updated parameters are not finite:
  # "stop" (error naming the step; the last checkpoint stays the latest) or
  # "skip" (the update is dropped; stop after nonfinite_max_skips in a row).
  config.nonfinite = "stop"
  config.nonfinite_max_skips = 10
  return config


def _fail(field: str, value: Any, requirement: str):
  raise ValueError(f"config.{field} {requirement}; got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  def check(field, ok, requirement):
    value = config
    for part in field.split("."):
      if part not in value:
        raise ValueError(f"config.{field} is missing; start from "
                         "sage_jax.config.base_config().")
      value = value[part]
    if not ok(value):
      _fail(field, value, requirement)

  one_of = rules.one_of
  positive_int, positive = rules.POSITIVE_INT, rules.POSITIVE
  non_negative, boolean = rules.NON_NEGATIVE, rules.BOOLEAN
  _is_int, _is_number = rules.is_int, rules.is_number
  steps = (lambda v: _is_int(v) and (v > 0 or v == -1),
           "must be a positive int, or -1 for once per epoch")

  checks = {
      "method": one_of(METHODS),
      "model.name": one_of(models.MODEL_NAMES),
      "model.width": (lambda v: _is_int(v) and v >= 0,
                      "must be an int >= 0 (0 = the architecture's default)"),
      "dataset.name": one_of(input_pipeline.DATASET_NAMES),
      "dataset.data_dir": (lambda v: isinstance(v, str), "must be a string"),
      "dataset.download": boolean,
      "batch_size": positive_int,
      "eval_batch_size": positive_int,
      "num_epochs": positive_int,
      "num_train_steps": (lambda v: _is_int(v) and (v > 0 or v == -1),
                          "must be a positive int, or -1 to use num_epochs"),
      "learning_rate": positive,
      "lr_boundaries": (lambda v: isinstance(v, (tuple, list)) and all(
          _is_number(b) and b > 0 for b in v) and list(v) == sorted(v),
                        "must be an increasing sequence of positive epochs"),
      "lr_decay": positive,
      "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "must lie in [0, 1)"),
      "nesterov": boolean,
      "weight_decay": non_negative,
      "loss": one_of(LOSSES),
      "seed": (lambda v: _is_int(v) and v >= 0, "must be an int >= 0"),
      "log_every_steps": positive_int,
      "eval_every_steps": steps,
      "checkpoint_every_steps": steps,
      "half_precision": boolean,
      "cross_device_batch_norm": boolean,
      "xla_cpu_eigen_convolutions": boolean,
      "multi_host": boolean,
      "num_devices": (lambda v: _is_int(v) and v >= 0,
                      "must be an int >= 0 (0 = all devices)"),
      "heartbeat_timeout_seconds": positive_int,
      "nonfinite": one_of(NONFINITE_POLICIES),
      "nonfinite_max_skips": positive_int,
  }
  for name, method in methods.REGISTRY.items():
    for field, rule in method.config_rules.items():
      checks[f"{name}.{field}"] = rule
  for field, (ok, requirement) in checks.items():
    check(field, ok, requirement)
  if config.multi_host and config.num_devices:
    _fail("num_devices", config.num_devices,
          "must be 0 (all devices) when multi_host=True")
  if config.dataset.name == "image_folder" and not config.dataset.data_dir:
    _fail("dataset.data_dir", config.dataset.data_dir,
          "must name the image folder root (with train/ and test/) when "
          "dataset.name='image_folder'")
