"""Reliability: non-finite steps, preemption, broken checkpoints, a workdir of
another run, bad data, and a real two-process run.

The cases about processes run `main.py` in subprocesses on a tiny image folder
(SAGE, PreActResNet8 of width 4, 8x8 images, 16 steps). They share one
reference run (one process, 8 CPU devices) and a persistent compilation cache,
so only the first run of each device layout compiles.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from sage_jax import checkpointing
from sage_jax import cli
from sage_jax import config as config_lib
from sage_jax import evaluate
from sage_jax import input_pipeline as ip
from sage_jax import methods
from sage_jax import metrics
from sage_jax import train
from test_train import make_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
# 36 training images / batch 8 = 4 steps per epoch: the learning rate drops
# (x lr_decay) after step 8, where the first checkpoint is.
RUN_FLAGS = ["--config", "configs/smoke.py", "--config.dataset.name=image_folder",
             "--config.batch_size=8", "--config.eval_batch_size=8",
             f"--config.num_train_steps={STEPS}", "--config.model.width=4",
             "--config.log_every_steps=4", "--config.checkpoint_every_steps=8",
             f"--config.eval_every_steps={STEPS}", "--config.lr_boundaries=(2,)",
             "--config.sage.sample_fraction=0.002"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def main_command(workdir, folder, *extra):
  return [sys.executable, "main.py", *RUN_FLAGS, f"--workdir={workdir}",
          f"--config.dataset.data_dir={folder}", *extra]


def main_env(compile_cache, devices=8, **extra):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compile_cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)


def run_main(workdir, folder, compile_cache, *extra, timeout=300):
  return subprocess.run(main_command(workdir, folder, *extra), cwd=REPO,
                        env=main_env(compile_cache), capture_output=True,
                        text=True, timeout=timeout)


def wait_for_metrics(path, process, timeout=240):
  """Waits until `path` has a record (or `process` ended)."""
  deadline = time.monotonic() + timeout
  while not (os.path.exists(path) and os.path.getsize(path)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "no metrics record in time"
    time.sleep(0.02)


def saved_state(workdir, step=None):
  """(step, raw state tree as numpy) of a workdir's checkpoint."""
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  read_only=True) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    return step, jax.tree.map(np.asarray, checkpointer._manager.restore(step))


def assert_bit_identical(workdir_a, workdir_b):
  (step_a, a), (step_b, b) = saved_state(workdir_a), saved_state(workdir_b)
  assert step_a == step_b == STEPS
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def records(workdir):
  """metrics.jsonl without the timing field."""
  return [{k: v for k, v in r.items() if k != "steps_per_second"}
          for r in metrics.read_metrics(workdir)]


@pytest.fixture(scope="module")
def reference(folder, compile_cache, tmp_path_factory):
  """An uninterrupted run: the workdir every resumed run must equal."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  result = run_main(workdir, folder, compile_cache)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


# --- 1. Non-finite loss or gradients -----------------------------------------------------


def _fake_method_step(key, params, batch_stats, batch):
  """A method step whose outcome the labels choose, per device shard:
  label 7 -> NaN loss, 8 -> infinite gradient, 9 -> a gradient that makes
  the updated parameters overflow; otherwise g = mean image value."""
  del key
  labels = batch.labels
  g = jnp.mean(batch.images) * jnp.ones_like(params["w"])
  g = jnp.where(jnp.any(labels == 8), jnp.inf, g)
  g = jnp.where(jnp.any(labels == 9), jnp.float32(3e38), g)
  loss = jnp.where(jnp.any(labels == 7), jnp.nan, jnp.sum(params["w"]))
  stats = {"mean": batch_stats["mean"] + 1.0}
  return methods.base.StepOutput(grads={"w": g}, batch_stats=stats,
                                 metrics={"loss": loss, "accuracy": loss * 0})


def test_a_nonfinite_step_never_reaches_the_state():
  mesh = jax.make_mesh((8,), ("data",))
  schedule = optax.constant_schedule(10.0)
  tx = optax.sgd(schedule)
  body = train.make_train_step_body(_fake_method_step, tx, (0.5,) * 3,
                                    (0.25,) * 3, schedule, nonfinite_metric=True)
  step = train.make_train_step(body, mesh)
  params = {"w": np.array([1.0, -2.0], np.float32)}
  host = train.TrainState(step=np.int32(0), params=params,
                          batch_stats={"mean": np.zeros(2, np.float32)},
                          opt_state=tx.init(params), rng=np.zeros(2, np.uint32))
  sharding = NamedSharding(mesh, P("data"))
  images = np.full((8, 2, 2, 3), 128, np.uint8)
  want_update = np.float32(10.0) * np.float32(
      np.mean(((128 / 255 - 0.5) / 0.25) * np.ones(3, np.float32)))
  for bad_label, code in ((None, 0.0), (7, 1.0), (8, 2.0), (9, 3.0)):
    labels = np.zeros(8, np.int32)
    if bad_label is not None:
      labels[5] = bad_label  # one device's shard is enough
    state, out = step(train.to_device_state(host, mesh),
                      jax.device_put(images, sharding),
                      jax.device_put(labels, sharding))
    state = jax.device_get(state)
    assert float(out["nonfinite"]) == code, bad_label
    assert int(state.step) == 1
    if code:
      np.testing.assert_array_equal(state.params["w"], params["w"])
      np.testing.assert_array_equal(state.batch_stats["mean"], np.zeros((8, 2)))
    else:
      np.testing.assert_allclose(state.params["w"], params["w"] - want_update,
                                 atol=1e-5)
      np.testing.assert_array_equal(state.batch_stats["mean"], np.ones((8, 2)))


def test_diverging_run_stops_skips_and_resumes_from_the_last_good_step(
    reference, folder, compile_cache, tmp_path):
  workdir = str(tmp_path / "run")
  # lr x 1e38 after step 8 (the checkpoint): the loss is NaN from step 10 on.
  diverging = ["--config.lr_decay=1e38"]
  stop = run_main(workdir, folder, compile_cache, *diverging)
  assert stop.returncode == cli.EXIT_NONFINITE, stop.stderr[-3000:]
  error = stop.stderr.strip().splitlines()[-1]
  assert error.startswith("ERROR: Step 10 of sage"), error
  assert "the metric 'loss' (nan)" in error and "checkpoint 8" in error
  assert "Traceback" not in stop.stderr
  assert saved_state(workdir)[0] == 8  # no NaN state saved
  assert max(r["step"] for r in records(workdir)) == 8

  skip = run_main(workdir, folder, compile_cache, *diverging,
                  "--config.nonfinite=skip", "--config.nonfinite_max_skips=3",
                  "--config.log_every_steps=1")
  assert skip.returncode == cli.EXIT_NONFINITE, skip.stderr[-3000:]
  assert "3 steps in a row (to step 12)" in skip.stderr
  skipped = {r["step"]: r["skipped_steps"] for r in records(workdir)
             if r["split"] == "train" and r["step"] > 8}
  assert skipped == {9: 0, 10: 1, 11: 1}
  assert saved_state(workdir)[0] == 8

  fixed = run_main(workdir, folder, compile_cache)  # lr_decay may change
  assert fixed.returncode == 0, fixed.stderr[-3000:]
  assert "Resumed from step 8" in fixed.stderr
  assert_bit_identical(reference, workdir)
  assert records(workdir) == records(reference)


# --- 2. Preemption ------------------------------------------------------------------------


def test_sigterm_saves_the_step_and_the_rerun_is_bit_identical(
    reference, folder, compile_cache, tmp_path):
  workdir = str(tmp_path / "run")
  process = subprocess.Popen(main_command(workdir, folder), cwd=REPO,
                             env=main_env(compile_cache), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  wait_for_metrics(os.path.join(workdir, "metrics.jsonl"), process)  # step 4
  process.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  process.send_signal(signal.SIGINT)  # a second signal, during step or save
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == cli.EXIT_PREEMPTED, stderr[-3000:]
  assert "Traceback" not in stderr
  line = stderr.strip().splitlines()[-1]
  saved = saved_state(workdir)[0]
  # Python runs the handlers of signals pending together in number order.
  assert re.match(rf"PREEMPTED: SIG(TERM|INT): stopped after step {saved} ", line)
  assert 4 < saved < STEPS

  resumed = run_main(workdir, folder, compile_cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {saved}" in resumed.stderr
  assert_bit_identical(reference, workdir)
  # Same records, same values (the log window straddling the stop included).
  assert records(workdir) == records(reference)


# --- 3. Broken latest checkpoint ----------------------------------------------------------


def _truncate_largest_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir)
           for name in names]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  return largest


def test_broken_latest_checkpoint_falls_back_to_the_newest_intact(
    reference, folder, compile_cache, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  _truncate_largest_file(os.path.join(checkpoints, str(STEPS)))
  # Finishing the run again: resumes from step 8 and redoes 9..16.
  result = run_main(workdir, folder, compile_cache)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Checkpoint {os.path.join(checkpoints, str(STEPS))} is broken" in result.stderr
  assert "Resumed from step 8" in result.stderr
  assert os.path.isdir(os.path.join(checkpoints, "broken", str(STEPS)))
  assert_bit_identical(reference, workdir)
  assert records(workdir) == records(reference)


def test_no_intact_checkpoint_is_an_error_not_a_restart(tmp_path):
  state = {"w": np.arange(6, dtype=np.float32), "step": np.array(3, np.int32)}
  directory = str(tmp_path / "checkpoints")
  with checkpointing.Checkpointer(directory) as checkpointer:
    checkpointer.save(1, state)
    checkpointer.save(2, jax.tree.map(lambda x: x + 1, state))
  os.remove(os.path.join(directory, "2", "default", "_METADATA"))
  with checkpointing.Checkpointer(directory, read_only=True) as reader:
    restored = reader.restore(state)  # falls back, read-only: nothing moved
    assert [s for s, _ in reader.broken_steps] == [2]
    np.testing.assert_array_equal(restored["w"], state["w"])
    with pytest.raises(checkpointing.CheckpointError, match="2 is broken"):
      reader.restore(state, step=2)
  assert os.path.isdir(os.path.join(directory, "2"))
  _truncate_largest_file(os.path.join(directory, "1"))
  with checkpointing.Checkpointer(directory) as checkpointer:
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"None of the checkpoints .*step 2: .*; step 1: "):
      checkpointer.restore(state)
  # A checkpoint of another model is a mismatch, never "broken".
  other = str(tmp_path / "other")
  with checkpointing.Checkpointer(other) as checkpointer:
    checkpointer.save(1, state)
    wrong = dict(state, w=np.zeros(5, np.float32))
    with pytest.raises(checkpointing.CheckpointMismatchError, match=r"\(6,\)"):
      checkpointer.restore(wrong)
    assert checkpointer.broken_steps == []


# --- 4. A workdir of another run ----------------------------------------------------------


def _run_config(folder, **overrides):
  """The config RUN_FLAGS describe, built in this process."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "smoke", os.path.join(REPO, "configs", "smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.dataset.name, config.dataset.data_dir = "image_folder", folder
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps, config.model.width = STEPS, 4
  for field, value in overrides.items():
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.mark.parametrize("field,value", [
    ("method", "mixup"), ("model.name", "wrn16_8"), ("model.width", 8),
    ("dataset.name", "cifar10"), ("batch_size", 16)])
def test_resuming_another_runs_workdir_is_refused(reference, folder, field, value):
  config = _run_config(folder, **{field: value})
  start = time.monotonic()
  with pytest.raises(train.WorkdirMismatchError) as error:
    train.train_and_evaluate(config, reference)
  assert time.monotonic() - start < 10  # before any data is loaded
  message = str(error.value)
  saved = {"method": "sage", "model.name": "preactresnet8", "model.width": 4,
           "dataset.name": "image_folder", "batch_size": 8}[field]
  assert f"config.{field}: saved {saved!r}, requested {value!r}" in message
  assert f"--config.{field}={saved}" in message and "new --workdir" in message
  code, line = cli.run_mode("train", config, reference)
  assert (code, line) == (cli.EXIT_ERROR, f"ERROR: {message}")


def test_fields_that_may_change_on_resume(reference, folder):
  train.check_resume_config(
      _run_config(folder, num_train_steps=99, eval_every_steps=3, seed=5,
                  learning_rate=0.5, checkpoint_every_steps=2), reference)


# --- 5. Bad data ----------------------------------------------------------------------------


def _good_folder(root):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in ("cat", "dog"):
      os.makedirs(root / split / name)
      for k in range(2):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(
            root / split / name / f"{k}.png")
  return root


def _truncated_jpeg(path):
  Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(path, quality=95)
  os.truncate(path, os.path.getsize(path) // 2)


BAD_FOLDERS = {
    # name: (break the folder, the file or folder the error names, the fix)
    "corrupt_jpeg": (lambda r: _truncated_jpeg(r / "train/cat/bad.jpg"),
                     "train/cat/bad.jpg", "replace it with a valid image"),
    "not_an_image": (lambda r: (r / "train/dog/1.png").write_bytes(b"text"),
                     "train/dog/1.png", "cannot be decoded"),
    "non_image_file": (lambda r: (r / "test/cat/notes.txt").write_text("x"),
                       "test/cat/notes.txt", "move it out of the class folder"),
    "other_size": (lambda r: Image.new("RGB", (7, 6)).save(r / "test/dog/9.png"),
                   "test/dog/9.png", "resize it to that size or remove it"),
    "sixteen_bit": (lambda r: Image.fromarray(
        np.full((6, 6), 40000, np.uint16)).save(r / "train/cat/deep.png"),
                    "train/cat/deep.png", "save it as 8-bit RGB"),
    "empty_class": (lambda r: os.makedirs(r / "train/emu") or shutil.copytree(
        r / "test/cat", r / "test/emu"), "train/emu", "add images"),
    "train_only_class": (lambda r: shutil.copytree(r / "train/cat", r / "train/fox"),
                         "test/fox", "add test images of class 'fox'"),
    "nested_folder": (lambda r: os.makedirs(r / "train/cat/more"),
                      "train/cat/more", "move its images up"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_image_folder_is_one_error_naming_the_file_and_the_fix(case, tmp_path):
  root = _good_folder(tmp_path)
  damage, named, fix = BAD_FOLDERS[case]
  damage(root)
  with pytest.raises(ip.DataError) as error:
    ip.load_dataset("image_folder", str(root))
  message = str(error.value)
  assert str(root / named) in message and fix in message, message
  assert ": 1 problem(s)" in message, message


def test_several_bad_files_are_listed_in_one_error(tmp_path):
  root = _good_folder(tmp_path)
  for k in range(12):
    (root / "train" / "cat" / f"bad{k:02d}.jpg").write_bytes(b"")
  with pytest.raises(ip.DataError, match=r"12 problem\(s\)") as error:
    ip.load_dataset("image_folder", str(root))
  assert "bad09.jpg" in str(error.value) and "... and 2 more" in str(error.value)


def test_grayscale_palette_and_rgba_images_are_converted_to_rgb(tmp_path):
  root = _good_folder(tmp_path)
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
  gray = rng.integers(0, 256, (6, 6), dtype=np.uint8)
  Image.fromarray(rgba, "RGBA").save(root / "train" / "cat" / "2.png")
  Image.fromarray(gray, "L").save(root / "train" / "cat" / "3.png")
  Image.fromarray(gray, "L").convert("P").save(root / "train" / "cat" / "4.png")
  data = ip.load_dataset("image_folder", str(root))
  images = data.train_images[:5]  # cat: 0, 1, 2 (RGBA), 3 (L), 4 (P)
  np.testing.assert_array_equal(images[2], rgba[..., :3])  # alpha dropped
  np.testing.assert_array_equal(images[3], np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(images[4], np.repeat(gray[..., None], 3, -1))


def test_bad_data_stops_the_run_before_any_step(tmp_path):
  root = _good_folder(tmp_path / "data")
  (root / "test" / "dog" / "junk.bin").write_bytes(b"\0")
  config = _run_config(str(root))
  code, line = cli.run_mode("train", config, str(tmp_path / "run"))
  assert code == cli.EXIT_ERROR and "junk.bin" in line and line.startswith("ERROR: ")
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
  assert os.listdir(tmp_path / "run" / "checkpoints") == []


def _corrupted_dir(root, labels, files):
  os.makedirs(root)
  np.save(root / "labels.npy", labels)
  for name, array in files.items():
    if isinstance(array, bytes):
      (root / name).write_bytes(array)
    else:
      np.save(root / name, array)
  return str(root)


@pytest.mark.parametrize("case,labels,files,named,fix", [
    ("shape", np.zeros(10, np.int64), {"fog.npy": np.zeros((10, 5, 4, 3), np.uint8)},
     "fog.npy", "must be uint8 (10, 4, 4, 3)"),
    ("dtype", np.zeros(10, np.int64), {"fog.npy": np.zeros((10, 4, 4, 3), np.float32)},
     "fog.npy", "use the file released with labels.npy"),
    ("labels_out_of_range", np.full(10, 12, np.int64),
     {"fog.npy": np.zeros((10, 4, 4, 3), np.uint8)}, "labels.npy",
     "outside [0, 10)"),
    ("float_labels", np.zeros(10, np.float32),
     {"fog.npy": np.zeros((10, 4, 4, 3), np.uint8)}, "labels.npy",
     "integer labels"),
    ("unreadable", np.zeros(10, np.int64), {"fog.npy": b"not npy"}, "fog.npy",
     "download it again"),
])
def test_bad_corrupted_dir_names_the_file_and_the_fix(case, labels, files, named,
                                                       fix, tmp_path):
  directory = _corrupted_dir(tmp_path / case, labels, files)
  with pytest.raises(ip.DataError) as error:
    evaluate._npy_corrupted_sets(directory, (4, 4, 3), num_classes=10)
  assert os.path.join(directory, named) in str(error.value)
  assert fix in str(error.value), str(error.value)


# --- 6. Several processes ------------------------------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, folder, compile_cache, *extra, heartbeat=60):
  port = _free_port()
  processes = []
  for index in range(2):
    env = main_env(compile_cache, devices=4,
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(index))
    processes.append(subprocess.Popen(
        main_command(workdir, folder, "--config.multi_host=True",
                     f"--config.heartbeat_timeout_seconds={heartbeat}", *extra),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  return processes


def test_two_processes_train_like_one_and_a_kill_stops_both(
    reference, folder, compile_cache, tmp_path):
  workdir = str(tmp_path / "run")
  processes = _start_two_processes(workdir, folder, compile_cache, heartbeat=5)
  wait_for_metrics(os.path.join(workdir, "metrics.jsonl"), processes[0])
  start = time.monotonic()
  processes[1].kill()  # e.g. its machine is lost
  try:
    _, stderr = processes[0].communicate(timeout=120)
  finally:
    processes[0].kill()
  seconds = time.monotonic() - start
  assert processes[0].returncode != 0
  assert "another task died" in stderr or "unhealthy" in stderr, stderr[-3000:]
  assert seconds < 60, seconds  # heartbeat timeout 5 s, not forever

  # Rerunning both finishes the run (from the last checkpoint, if any).
  processes = _start_two_processes(workdir, folder, compile_cache)
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert "2 process(es)" in outputs[1][1]
  (step, two), (_, one) = saved_state(workdir), saved_state(reference)
  assert step == STEPS
  # Same global batch, seed and data: the same run up to the all-reduce's
  # summation order (gloo between processes, XLA within one).
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Process 0 alone writes the metrics: each record once.
  keys = [(r["step"], r["split"]) for r in records(workdir)]
  assert keys == [(r["step"], r["split"]) for r in records(reference)]
  assert "best test accuracy" in outputs[0][0]
  assert "best test accuracy" not in outputs[1][0]


def test_distributed_arguments_from_the_environment():
  assert cli.distributed_arguments({}) == {}
  assert cli.distributed_arguments({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == {
      "num_processes": 2, "process_id": 1}
  for bad in ({"JAX_NUM_PROCESSES": "2"}, {"JAX_PROCESS_ID": "0"},
              {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
              {"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}):
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
      cli.distributed_arguments(bad)


def test_new_config_fields_are_validated():
  for field, value in (("nonfinite", "ignore"), ("nonfinite_max_skips", 0),
                       ("heartbeat_timeout_seconds", -1)):
    config = config_lib.base_config()
    config[field] = value
    with pytest.raises(ValueError, match=f"config.{field}"):
      config_lib.validate_config(config)
    code, line = cli.run_mode("train", config, "unused")
    assert code == cli.EXIT_ERROR and line.startswith(f"ERROR: config.{field} ")
