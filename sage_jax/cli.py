"""The training program's command line, and the flag parsing it shares.

    sage-jax-train --config configs/cifar10.py [--workdir DIR] [--config.field=value ...]
    python main.py ...                        # the same program

`run()` is the program (the `sage-jax-train` console script and `main.py`
both call it): it parses the flags, logs the JAX backend and devices (with a
warning when an NVIDIA GPU is present but JAX runs on the CPU), makes sure the
dataset is there (downloading tfds datasets when possible, failing within
seconds with instructions when not; `sage_jax.datasets`), then trains or
evaluates (`run_mode`). The expected ways to stop end in one stderr line and
an exit status: EXIT_ERROR (1) for something to fix, EXIT_NONFINITE (3) when
training diverged, EXIT_PREEMPTED (75) after SIGTERM/SIGINT saved the step.

`parse_flags` is absl's flag parsing, except that a `--config.<field>`
override naming no field of the configuration (e.g. the typo
`--config.sage.upper_lamda=0.5`) stops the program with one line naming the
field and its closest matches, where ml_collections raises a chain of
tracebacks. `python -m sage_jax.compare` uses it too:

    app.run(main, flags_parser=cli.parse_flags)
"""
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Optional, Sequence

try:
  from absl import app
  from absl import flags
  from absl import logging
  import ml_collections
  from ml_collections import config_flags
except ModuleNotFoundError as _error:  # A core-only install.
  raise ModuleNotFoundError(
      f"{_error.name} is not installed: the training program needs the "
      "package's train extra: pip install \"sage_jax[train]\" (from a clone: "
      "pip install -e \".[train]\").", name=_error.name) from _error


def _config_path(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of `--<name>=PATH` or `--<name> PATH` in `argv`, if any."""
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{name}(=(.*))?$", arg)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list:
  """Dotted paths of every field and block of `config`."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(_field_paths(value, path + "."))
  return paths


def unknown_field_message(config: ml_collections.ConfigDict,
                          overrides: Sequence[str],
                          name: str = "config") -> Optional[str]:
  """One line about the first override that names no field of `config`.

  Args:
    config: the configuration the overrides apply to.
    overrides: dotted field paths, e.g. ["sage.upper_lamda"].
    name: the config flag's name, for the message.

  Returns:
    e.g. "--config.sage.upper_lamda: no such config field; did you mean
    --config.sage.upper_lambda?", or None when every override names a field.
  """
  known = _field_paths(config)
  for path in overrides:
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        block = ".".join(parts[:depth])
        return (f"--{name}.{path}: {name}.{block} is a value, not a block of "
                "fields.")
      if part not in node:
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        if close:
          hint = ("did you mean " + " or ".join(f"--{name}.{c}" for c in close)
                  + "?")
        else:
          parent = ".".join(parts[:depth])
          hint = (f"the fields of {name}{'.' + parent if parent else ''} are "
                  + ", ".join(sorted(node.keys())) + ".")
        return f"--{name}.{path}: no such config field; {hint}"
      node = node[part]
  return None


def parse_flags(argv: Sequence[str], name: str = "config") -> list:
  """absl's flag parsing with one-line errors for unknown config fields.

  Pass as `app.run(main, flags_parser=parse_flags)`.

  Args:
    argv: the command line, program name first.
    name: the name of the `config_flags.DEFINE_config_file` flag.

  Returns:
    The arguments left after parsing the flags, program name first.

  Raises:
    SystemExit: with status 1 after writing one line to stderr, when an
      override names no field; other flag errors exit as absl's do.
  """
  try:
    return app.parse_flags_with_usage(list(argv))
  except (AttributeError, KeyError) as error:
    # ml_collections raises these (not flags.Error) for an unknown field.
    # `--config.a.b=v` or `--config.a.b v`: the override path is "a.b".
    matches = (re.match(rf"^--?{name}\.([^=\s]+)", arg) for arg in argv)
    overrides = [match.group(1) for match in matches if match]
    message = None
    path = _config_path(argv, name)
    if path is not None:
      # Loaded again: ml_collections does not keep the config when it fails.
      config = flags.FLAGS[name].parser.parse(path)
      message = unknown_field_message(config, overrides, name)
    if message is None:
      message = str(error).strip("'\"").splitlines()[0]
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)


# --- The training program -----------------------------------------------------


def default_workdir(config_path: str) -> str:
  """./workdir/<config file stem>[_<argument>] for `configs/x.py[:arg]`."""
  path, _, argument = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdir", f"{name}_{argument}" if argument else name)


def nvidia_gpu_present() -> bool:
  """Whether this machine has an NVIDIA GPU: /dev/nvidia0, or `nvidia-smi -L`
  listing one (10 s at most; any failure counts as no GPU)."""
  if os.path.exists("/dev/nvidia0"):
    return True
  executable = shutil.which("nvidia-smi")
  if executable is None:
    return False
  try:
    listing = subprocess.run([executable, "-L"], capture_output=True, text=True,
                             timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return False
  return listing.returncode == 0 and "GPU" in listing.stdout


def gpu_install_command(jax_version: str) -> str:
  """The pip command that adds CUDA support to jax `jax_version`."""
  return f'pip install "jax[cuda12]=={jax_version}"'


def accelerator_warning(backend: str, gpu_present: bool, jax_version: str,
                        jax_platforms: str = "") -> Optional[str]:
  """The warning for an NVIDIA GPU that JAX does not use, or None.

  Args:
    backend: `jax.default_backend()`, e.g. "cpu", "gpu", "tpu".
    gpu_present: `nvidia_gpu_present()`.
    jax_version: `jax.__version__`, for the install command.
    jax_platforms: the JAX_PLATFORMS environment variable: a CPU run the
      user asked for ("cpu") is not warned about.

  Returns:
    One line naming the command that installs the CUDA build, or None when
    there is nothing to fix.
  """
  if backend != "cpu" or not gpu_present:
    return None
  if jax_platforms.strip().lower() == "cpu":
    return None
  return (f"An NVIDIA GPU is present but JAX {jax_version} runs on the CPU "
          "(its CPU-only build is installed). Install the CUDA build with: "
          f"{gpu_install_command(jax_version)} (from a clone: pip install -e "
          "\".[train,cuda12]\"; CUDA 13 drivers: cuda13), then check with "
          "python -c \"import jax; print(jax.devices())\".")


def log_runtime(jax_module=None) -> Optional[str]:
  """Logs JAX's version, backend and devices; warns about an unused GPU.

  Args:
    jax_module: the imported `jax` (default: imports it).

  Returns:
    The warning that was logged, or None.
  """
  if jax_module is None:
    import jax as jax_module  # pylint: disable=g-import-not-at-top
  devices = jax_module.devices()
  backend = jax_module.default_backend()
  kinds = sorted({d.device_kind for d in devices})
  logging.info("JAX %s, backend %s: %d device(s) (%s) over %d process(es); "
               "this is process %d with %d local device(s): %s",
               jax_module.__version__, backend, len(devices), ", ".join(kinds),
               jax_module.process_count(), jax_module.process_index(),
               jax_module.local_device_count(), jax_module.local_devices())
  warning = accelerator_warning(backend, backend == "cpu" and nvidia_gpu_present(),
                                jax_module.__version__,
                                os.environ.get("JAX_PLATFORMS", ""))
  if warning:
    logging.warning("%s", warning)
  return warning


def distributed_arguments(environ) -> dict:
  """`jax.distributed.initialize` arguments from the environment.

  JAX reads JAX_COORDINATOR_ADDRESS itself and detects TPU, SLURM and Open
  MPI clusters, but not the process count and index of a hand-started run
  (e.g. several processes on one machine); this reads them from
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.

  Args:
    environ: the environment (a mapping of str to str).

  Returns:
    {} when neither variable is set (JAX's own detection), else
    {"num_processes": int, "process_id": int}.

  Raises:
    ValueError: only one of the two is set, or they are not integers with
      0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES.
  """
  count, index = environ.get("JAX_NUM_PROCESSES"), environ.get("JAX_PROCESS_ID")
  if count is None and index is None:
    return {}
  if count is None or index is None:
    raise ValueError(
        "Set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (with "
        "JAX_COORDINATOR_ADDRESS=host:port), or neither to let JAX detect the "
        f"cluster; got JAX_NUM_PROCESSES={count!r}, JAX_PROCESS_ID={index!r}.")
  try:
    count, index = int(count), int(index)
  except ValueError:
    count = index = -1
  if not 0 <= index < count:
    raise ValueError(
        "JAX_NUM_PROCESSES must be a positive integer and JAX_PROCESS_ID an "
        "integer in [0, JAX_NUM_PROCESSES); got "
        f"{environ.get('JAX_NUM_PROCESSES')!r} and "
        f"{environ.get('JAX_PROCESS_ID')!r}.")
  return {"num_processes": count, "process_id": index}


def initialize_distributed(config, jax_module) -> None:
  """`jax.distributed.initialize` for `--config.multi_host=True`.

  A process that stops sending heartbeats for
  `config.heartbeat_timeout_seconds` (killed, crashed, machine lost) makes
  every other process stop with an error instead of waiting forever in a
  collective.
  """
  jax_module.distributed.initialize(
      heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
      **distributed_arguments(os.environ))


_TRAIN_FLAGS = {}


def define_train_flags() -> dict:
  """Defines the training program's flags once; returns them by name."""
  if _TRAIN_FLAGS:
    return _TRAIN_FLAGS
  _TRAIN_FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Training configuration file (e.g. the repository's "
      "configs/cifar10.py, or your own).", lock_config=True)
  _TRAIN_FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None,
      "Directory for checkpoints and metrics; default ./workdir/<config name>.")
  _TRAIN_FLAGS["mode"] = flags.DEFINE_enum(
      "mode", "train", ["train", "eval"],
      "train: train (resuming from --workdir); eval: evaluate the latest "
      "checkpoint in --workdir and write eval.json and eval.md there.")
  _TRAIN_FLAGS["corrupted_dir"] = flags.DEFINE_string(
      "corrupted_dir", None,
      "--mode=eval only: folder of the released CIFAR-10-C/CIFAR-100-C files "
      "(labels.npy and <corruption>.npy, 5 severities each). Without it, "
      "dataset.name=cifar10 runs use tfds's cifar10_corrupted (downloaded "
      "when possible).")
  flags.mark_flags_as_required(["config"])
  return _TRAIN_FLAGS


def train_main(argv: Sequence[str]) -> None:
  """The program after flag parsing (`app.run`'s main)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train_flags = define_train_flags()
  mode, corrupted_dir = train_flags["mode"].value, train_flags["corrupted_dir"].value
  if corrupted_dir and mode != "eval":
    raise app.UsageError("--corrupted_dir is only used with --mode=eval.")
  config = train_flags["config"].value
  # Imported here so that --help works without initialising JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import datasets  # pylint: disable=g-import-not-at-top
  if config.multi_host:
    try:
      initialize_distributed(config, jax)
    except ValueError as error:  # JAX_NUM_PROCESSES / JAX_PROCESS_ID
      sys.stderr.write(f"ERROR: {error}\n")
      sys.exit(EXIT_ERROR)
  log_runtime(jax)
  workdir = (train_flags["workdir"].value
             or default_workdir(flags.FLAGS["config"].config_filename))
  logging.info("workdir %s", workdir)
  try:
    warnings = datasets.prepare_for_run(
        config, evaluate_corruptions=mode == "eval" and not corrupted_dir)
  except datasets.DatasetUnavailableError as error:
    sys.stderr.write(f"ERROR: {error}\n")
    sys.exit(1)
  for warning in warnings:
    logging.warning("%s", warning)
  code, message = run_mode(mode, config, workdir, corrupted_dir)
  if code:
    sys.stderr.write(message + "\n")
    sys.exit(code)


# Exit statuses of the program besides 0 (done) and absl's 1 for flag errors.
EXIT_ERROR = 1        # bad config, data, workdir or checkpoints: fix, rerun
EXIT_NONFINITE = 3    # training diverged (non-finite loss/gradient/params)
EXIT_PREEMPTED = 75   # SIGTERM/SIGINT: saved; rerun the same command (EX_TEMPFAIL)


def run_mode(mode: str, config, workdir: str,
             corrupted_dir: Optional[str] = None) -> tuple:
  """Trains or evaluates; turns the expected ways to stop into exit statuses.

  Returns:
    (0, "") when done; otherwise (status, one message for stderr), with
    status EXIT_PREEMPTED, EXIT_NONFINITE or EXIT_ERROR (a workdir of another
    run, unreadable checkpoints, bad data files). Other exceptions propagate
    with their traceback (they are bugs). After a preemption SIGINT and
    SIGTERM are ignored: the caller is expected to exit.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from sage_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sage_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate_config(config)
  except ValueError as error:  # names the field
    return EXIT_ERROR, f"ERROR: {error}"
  try:
    if mode == "eval":
      from sage_jax import evaluate  # pylint: disable=g-import-not-at-top
      results = evaluate.evaluate_workdir(config, workdir,
                                          corrupted_dir=corrupted_dir)
      if jax.process_index() == 0:
        print(evaluate.to_markdown(results))
        print(f"Wrote {os.path.join(workdir, 'eval.json')} and eval.md "
              f"({results['seconds']:.0f} s).")
    else:
      train.train_and_evaluate(config, workdir)
  except train.Preempted as stop:
    # Exiting anyway: a repeated Ctrl-C must not turn into a traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
      try:
        signal.signal(signum, signal.SIG_IGN)
      except ValueError:  # Not the main thread: nothing was installed.
        pass
    return EXIT_PREEMPTED, f"PREEMPTED: {stop}"
  except train.NonFiniteError as error:
    return EXIT_NONFINITE, f"ERROR: {error}"
  except (train.WorkdirMismatchError, checkpointing.CheckpointError,
          checkpointing.CheckpointMismatchError,
          input_pipeline.DataError) as error:
    return EXIT_ERROR, f"ERROR: {error}"
  return 0, ""


def run(argv: Optional[Sequence[str]] = None) -> None:
  """The training program: `sage-jax-train` and `python main.py`.

  Args:
    argv: the command line, program name first (default: sys.argv).
  """
  argv = list(sys.argv if argv is None else argv)
  for flag in define_train_flags().values():
    # --help lists the flags of the program's main module (absl keys it by
    # its argv[0]): main.py or the console script, not this module.
    for program in {argv[0], sys.argv[0]}:
      flags.FLAGS.register_key_flag_for_module(program, flags.FLAGS[flag.name])
  app.run(train_main, argv=argv, flags_parser=parse_flags)
