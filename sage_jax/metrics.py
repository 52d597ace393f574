"""Metric logging: a JSON-lines file, TensorBoard mirrors and a progress bar.

* :class:`MetricWriter` appends one JSON object per line to
  ``<workdir>/metrics.jsonl`` (the record the analysis tools read back with
  :func:`read_metrics`) and mirrors the numeric fields as TensorBoard scalars
  under ``<workdir>/tensorboard/<split>``.
* :func:`summarize` reduces the test evaluations to the numbers reported for a
  run (best and median-of-last-10 accuracy).
* :class:`ProgressBar` shows training progress with an ETA on the console.

TensorFlow is imported only when the first TensorBoard scalar is written, so
importing this module stays cheap.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Mapping

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


class MetricWriter:
  """Appends one JSON object per line to <workdir>/metrics.jsonl and mirrors numeric fields to TensorBoard event files in <workdir>/tensorboard/<split>."""

  def __init__(self, workdir: str, *, resume_step: int | None = None,
               enabled: bool = True):
    """Opens the metrics file for appending.

    Args:
      workdir: run directory (created if missing).
      resume_step: step of the checkpoint the run resumed from. Records with
        a larger step were written by the interrupted run after its last
        checkpoint; they are dropped from ``metrics.jsonl`` because the
        resumed run recomputes them. Pass 0 for a fresh start in a reused
        workdir to drop everything after step 0; None keeps every complete
        record. TensorBoard event files are append-only and not rewritten,
        so after a resume TensorBoard may show the interrupted run's extra
        points next to the recomputed ones; metrics.jsonl is the
        authoritative record.
      enabled: False writes nothing at all (non-zero processes of a
        multi-host run, so that only process 0 owns the files).
    """
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILENAME)
    self._tb_dir = os.path.join(workdir, TENSORBOARD_DIRNAME)
    self._tb_writers: dict[str, Any] = {}
    self._file = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      # Also run without resume_step: it drops a torn last line, which the
      # next appended record would otherwise be glued onto.
      _rewrite_up_to_step(
          self.path, None if resume_step is None else int(resume_step))
    self._file = open(self.path, "a", encoding="utf-8")

  def write(self, record: Mapping[str, Any]) -> None:
    """Writes one record (one line; flushed so a crash loses nothing).

    Args:
      record: must hold ``'step'`` (int) and ``'split'`` (str, e.g. 'train'
        or 'test'); other fields are numbers (Python, numpy or 0-d jax
        arrays) or strings. Numeric fields other than ``step`` also go to
        TensorBoard under ``tensorboard/<split>`` with tag = field name.

    Raises:
      ValueError: if 'step' or 'split' is missing, or a field is neither a
        number nor a string.
      RuntimeError: if the writer was closed.
    """
    if not self.enabled:
      return
    if self._file is None:
      raise RuntimeError("MetricWriter is closed.")
    clean = _to_json_record(record)
    self._file.write(json.dumps(clean) + "\n")
    self._file.flush()
    self._write_tensorboard(clean)

  def _write_tensorboard(self, record: Mapping[str, Any]) -> None:
    """Mirrors the numeric fields of `record` as TensorBoard scalars."""
    scalars = {k: v for k, v in record.items()
               if k not in ("step", "split") and _is_number(v)}
    if not scalars:
      return
    writer = self._tb_writer(record["split"])
    tf = _import_tensorflow()
    metadata = _scalar_summary_metadata()
    with writer.as_default(step=record["step"]):
      for name, value in scalars.items():
        # tf.summary.scalar needs the `tensorboard` package, which the project
        # does not depend on; tf.summary.write with the scalar plugin's
        # metadata produces the same event (a float32 0-d tensor).
        tf.summary.write(name, tf.constant(float(value), tf.float32),
                         metadata=metadata)
    # Flushing per record keeps TensorBoard current; records are written only
    # every few hundred steps, so the cost is negligible.
    writer.flush()

  def _tb_writer(self, split: str):
    """Returns (creating on first use) the event-file writer for `split`."""
    if split not in self._tb_writers:
      tf = _import_tensorflow()
      self._tb_writers[split] = tf.summary.create_file_writer(
          os.path.join(self._tb_dir, split))
    return self._tb_writers[split]

  def close(self) -> None:
    """Flushes and closes the metrics file and the TensorBoard writers."""
    if self._file is not None:
      self._file.close()
      self._file = None
    for writer in self._tb_writers.values():
      writer.close()
    self._tb_writers.clear()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


_tf_module = None


def _import_tensorflow():
  """Imports TensorFlow (once) for summaries only, keeping it off any GPU."""
  global _tf_module
  if _tf_module is not None:
    return _tf_module
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    # TF would otherwise reserve GPU memory that JAX needs. This fails once
    # TF has initialised its devices (e.g. the input pipeline already did
    # this), which is harmless.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass
  _tf_module = tf
  return tf


def _scalar_summary_metadata():
  """Metadata marking a summary as a TensorBoard scalar (plugin 'scalars')."""
  from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
  return summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
      data_class=summary_pb2.DATA_CLASS_SCALAR)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _to_python_scalar(key: str, value: Any) -> Any:
  """Converts numpy/jax scalars to Python numbers; strings pass through.

  Raises:
    ValueError: for values that are neither scalars nor strings.
  """
  if isinstance(value, (str, bool, int, float)):
    return value
  if isinstance(value, numbers.Number):  # numpy scalar types
    return value.item() if hasattr(value, "item") else float(value)
  array = np.asarray(value)  # 0-d jax/numpy arrays
  if array.ndim == 0 and array.dtype.kind in "biuf":
    return array.item()
  raise ValueError(
      f"Metric {key!r} must be a number or string, got {type(value).__name__} "
      f"with shape {getattr(value, 'shape', None)}.")


def _to_json_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """Validates `record` and returns it with plain-Python values."""
  for required in ("step", "split"):
    if required not in record:
      raise ValueError(f"Metric record needs a {required!r} field: {record!r}")
  clean = {key: _to_python_scalar(key, value) for key, value in record.items()}
  clean["step"] = int(clean["step"])
  clean["split"] = str(clean["split"])
  return clean


def _rewrite_up_to_step(path: str, max_step: int | None) -> None:
  """Rewrites `path` without the records whose step is larger than `max_step`.

  `max_step` None keeps every record. A torn last line (the process died
  mid-write) is dropped either way. The file is replaced atomically so that a
  crash here cannot lose the kept records.
  """
  kept = [(text, record)
          for text, record in _parse_lines(path, tolerate_torn_tail=True)
          if max_step is None or record.get("step", 0) <= max_step]
  tmp_path = path + ".tmp"
  with open(tmp_path, "w", encoding="utf-8") as f:
    f.writelines(text for text, _ in kept)
  os.replace(tmp_path, path)


def _parse_lines(path: str, *, tolerate_torn_tail: bool):
  """Returns [(line text with newline, parsed record)] for `path`.

  Raises:
    ValueError: for a line that is not a JSON object, unless it is the last
      line and `tolerate_torn_tail` is set (then it is skipped).
  """
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  parsed = []
  for i, text in enumerate(lines):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if tolerate_torn_tail and i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{i + 1}: malformed metrics line: {e}") from e
    if not text.endswith("\n"):
      text += "\n"
    parsed.append((text, record))
  return parsed


def read_metrics(path_or_workdir: str) -> list[dict]:
  """Reads the records of a metrics.jsonl file, in file order.

  Args:
    path_or_workdir: the metrics.jsonl file, or the run directory holding it.

  Returns:
    One dict per line. A torn last line (run killed mid-write) is skipped.

  Raises:
    FileNotFoundError: if there is no metrics file.
    ValueError: if any other line is not a JSON object.
  """
  path = path_or_workdir
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No metrics file at {path}.")
  return [record for _, record in _parse_lines(path, tolerate_torn_tail=True)]


def summarize(records: list[dict]) -> dict:
  """Summarises the test evaluations of a run.

  Records with ``split == 'test'`` are ordered by step; their ``accuracy``
  field gives:

  * ``best_test_accuracy`` / ``best_test_step``: the maximum and the earliest
    step reaching it,
  * ``median_last10_test_accuracy``: median over the last 10 evaluations (all
    of them if fewer) -- the robust number to report, since the best one is
    picked with knowledge of the test set,
  * ``final_test_accuracy``: the last evaluation,
  * ``num_test_evals``: how many evaluations there were.

  Raises:
    ValueError: if there is no test record with an accuracy.
  """
  tests = sorted((r for r in records
                  if r.get("split") == "test" and "accuracy" in r),
                 key=lambda r: r["step"])
  if not tests:
    raise ValueError("No test evaluations (records with split == 'test' and "
                     "an 'accuracy' field) to summarize.")
  accuracies = [float(r["accuracy"]) for r in tests]
  best_index = int(np.argmax(accuracies))  # first maximum = earliest step
  return {
      "best_test_accuracy": accuracies[best_index],
      "best_test_step": int(tests[best_index]["step"]),
      "median_last10_test_accuracy": float(np.median(accuracies[-10:])),
      "final_test_accuracy": accuracies[-1],
      "num_test_evals": len(tests),
  }


class ProgressBar:
  """Console progress over training steps with ETA (tqdm), showing a few latest metrics as postfix; disabled when not enabled."""

  # Postfix fields shown, in this order, when present in the metrics.
  _PREFERRED_KEYS = ("loss", "accuracy", "learning_rate", "steps_per_sec")
  _MAX_POSTFIX = 4

  def __init__(self, total_steps: int, initial_step: int = 0, *,
               enabled: bool = True):
    """Creates the bar at `initial_step` of `total_steps`.

    Args:
      total_steps: step count at which training ends.
      initial_step: step training (re)starts from; the ETA only counts the
        steps run in this process.
      enabled: False makes every method a no-op (non-zero processes).
    """
    from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
    self._step = int(initial_step)
    self._bar = tqdm_auto.tqdm(
        total=int(total_steps), initial=self._step, disable=not enabled,
        unit="step", dynamic_ncols=True, smoothing=0.1)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Moves the bar to `step` and shows a few of `metrics` next to it."""
    step = int(step)
    if metrics:
      self._bar.set_postfix(_postfix(metrics, self._PREFERRED_KEYS,
                                     self._MAX_POSTFIX), refresh=False)
    if step > self._step:
      self._bar.update(step - self._step)  # also redraws the postfix
      self._step = step
    elif metrics:
      self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


def _postfix(metrics: Mapping[str, Any], preferred: tuple[str, ...],
             limit: int) -> dict[str, str]:
  """Picks up to `limit` numeric metrics, preferred keys first, formatted."""
  numeric = {}
  for key, value in metrics.items():
    if key in ("step", "split"):
      continue
    try:
      value = _to_python_scalar(key, value)
    except ValueError:
      continue
    if _is_number(value):
      numeric[key] = value
  keys = [k for k in preferred if k in numeric]
  keys += [k for k in numeric if k not in keys]
  return {k: _format_number(numeric[k]) for k in keys[:limit]}


def _format_number(value: float) -> str:
  if isinstance(value, int):
    return str(value)
  if math.isfinite(value) and value != 0 and not 1e-3 <= abs(value) < 1e4:
    return f"{value:.3e}"
  return f"{value:.4f}"
