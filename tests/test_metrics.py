"""Tests for sage_jax.metrics: JSONL records, resume truncation, TensorBoard,
summaries and the progress bar."""
from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import metrics
from sage_jax.metrics import MetricWriter, ProgressBar, read_metrics, summarize


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_writes_one_json_line_per_record_with_python_scalars(tmp_path):
  workdir = str(tmp_path / "run")  # created by the writer
  with MetricWriter(workdir) as writer:
    writer.write({"step": np.int64(10), "split": "train",
                  "loss": jnp.float32(1.5), "accuracy": np.float32(0.25),
                  "dataset": "cifar10", "learning_rate": 0.1})
    writer.write({"step": 20, "split": "test", "accuracy": jnp.asarray(0.5)})
  assert _lines(workdir) == [
      {"step": 10, "split": "train", "loss": 1.5, "accuracy": 0.25,
       "dataset": "cifar10", "learning_rate": 0.1},
      {"step": 20, "split": "test", "accuracy": 0.5},
  ]
  assert read_metrics(workdir) == _lines(workdir)
  assert read_metrics(os.path.join(workdir, "metrics.jsonl")) == _lines(workdir)


def test_each_line_is_flushed_immediately(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write({"step": 1, "split": "train", "loss": 2.0})
  # Readable before close: a crash right after write loses nothing.
  assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train",
                                          "loss": 2.0}]
  writer.close()


def test_invalid_records_raise(tmp_path):
  with MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="split"):
      writer.write({"step": 1, "loss": 1.0})
    with pytest.raises(ValueError, match="'per_class'"):
      writer.write({"step": 1, "split": "test", "per_class": np.zeros(3)})


def test_resume_drops_records_after_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with MetricWriter(workdir) as writer:
    for step in (100, 200, 300):
      writer.write({"step": step, "split": "train", "loss": step / 100})
    writer.write({"step": 200, "split": "test", "accuracy": 0.5})
    writer.write({"step": 300, "split": "test", "accuracy": 0.6})
  # Simulate the process dying mid-line after step 300.
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 400, "spl')

  with MetricWriter(workdir, resume_step=200) as writer:
    writer.write({"step": 300, "split": "train", "loss": 9.0})
  assert [(r["step"], r["split"]) for r in read_metrics(workdir)] == [
      (100, "train"), (200, "train"), (200, "test"), (300, "train")]
  assert read_metrics(workdir)[-1]["loss"] == 9.0


def test_reopening_without_resume_step_repairs_torn_line(tmp_path):
  workdir = str(tmp_path)
  with MetricWriter(workdir) as writer:
    writer.write({"step": 1, "split": "train", "loss": 1.0})
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2, "sp')  # torn
  with MetricWriter(workdir) as writer:
    writer.write({"step": 2, "split": "train", "loss": 0.5})
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]


def test_read_metrics_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    read_metrics(str(tmp_path))
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=":2:"):
    read_metrics(str(path))


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  writer = MetricWriter(str(workdir), enabled=False)
  writer.write({"step": 1, "split": "train", "loss": 1.0})
  writer.close()
  assert not workdir.exists()


def test_tensorboard_scalars_written(tmp_path):
  workdir = str(tmp_path)
  with MetricWriter(workdir) as writer:
    writer.write({"step": 50, "split": "test", "accuracy": 0.75,
                  "loss": np.float32(0.5), "note": "text is not mirrored"})
  files = glob.glob(os.path.join(workdir, "tensorboard", "test",
                                 "events.out.tfevents.*"))
  assert len(files) == 1

  tf = metrics._import_tensorflow()
  scalars = {}
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      # TensorBoard shows a summary as a scalar if the plugin says so.
      assert value.metadata.plugin_data.plugin_name == "scalars"
      # TF2 summaries store scalars as 0-d tensors.
      scalars[value.tag] = (event.step,
                            float(tf.make_ndarray(value.tensor)))
  assert scalars == {"accuracy": (50, 0.75), "loss": (50, 0.5)}


def _test_records(accuracies, start=1000, every=1000):
  return [{"step": start + i * every, "split": "test", "accuracy": a,
           "loss": 1.0} for i, a in enumerate(accuracies)]


def test_summarize_hand_computed():
  accuracies = [0.10, 0.50, 0.95, 0.20, 0.80, 0.95, 0.60, 0.70, 0.30, 0.90,
                0.40, 0.85]
  records = _test_records(accuracies)
  records += [{"step": 500, "split": "train", "accuracy": 0.99, "loss": 0.1}]
  records.reverse()  # order must not matter; steps do
  summary = summarize(records)
  # Best 0.95 first reached at the 3rd evaluation (step 3000).
  assert summary["best_test_accuracy"] == 0.95
  assert summary["best_test_step"] == 3000
  # Last 10 = accuracies[2:]; sorted: .2 .3 .4 .6 .7 .8 .85 .9 .95 .95
  # -> median = (0.7 + 0.8) / 2.
  assert summary["median_last10_test_accuracy"] == pytest.approx(0.75)
  assert summary["final_test_accuracy"] == 0.85
  assert summary["num_test_evals"] == 12


def test_summarize_fewer_than_ten_and_odd_count():
  summary = summarize(_test_records([0.3, 0.9, 0.5]))
  assert summary["median_last10_test_accuracy"] == 0.5
  assert summary["best_test_step"] == 2000
  assert summary["num_test_evals"] == 3


def test_summarize_without_test_records_raises():
  with pytest.raises(ValueError, match="test"):
    summarize([{"step": 1, "split": "train", "accuracy": 0.5}])


@pytest.mark.parametrize("enabled", [False, True])
def test_progress_bar_runs(enabled, capsys):
  bar = ProgressBar(total_steps=100, initial_step=10, enabled=enabled)
  bar.update(20)
  bar.update(50, {"step": 50, "split": "train", "loss": jnp.float32(0.123),
                  "accuracy": np.float64(0.5), "learning_rate": 1e-5,
                  "note": "skipped", "extra": 3})
  bar.update(50, {"loss": 0.1})  # same step: only the postfix changes
  bar.update(100)
  bar.close()
  err = capsys.readouterr().err
  if enabled:
    assert "100/100" in err and "loss=" in err
  else:
    assert err == ""


def test_postfix_prefers_key_metrics():
  postfix = metrics._postfix(
      {"z": 1.0, "loss": 0.5, "accuracy": 0.25, "a": 2, "b": 3.0, "s": "x"},
      ("loss", "accuracy"), limit=3)
  assert postfix == {"loss": "0.5000", "accuracy": "0.2500", "z": "1.0000"}
