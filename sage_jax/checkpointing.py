"""Saving and restoring the training state with orbax.

:class:`Checkpointer` is a thin wrapper around ``orbax.checkpoint``'s
``CheckpointManager`` that fixes the few choices the trainer cares about:

* One item per step: the whole training-state pytree (a ``flax.struct``
  dataclass of arrays, optax state included), saved with ``StandardSave``.
* Saves are asynchronous: :meth:`Checkpointer.save` returns once the arrays
  have been copied off the accelerator and the write continues in a background
  thread. Orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames it to
  ``<step>`` only when every file (and every process) is done, so a crash
  mid-save never leaves a partial checkpoint that a later run would take as
  the latest. Leftover temporary directories are deleted when the next
  :class:`Checkpointer` opens the directory.
* Restores are driven by a *target* pytree: the result has the target's
  structure, dtypes and shapes, and for ``jax.Array`` leaves also their
  shardings, so a state restored onto a device mesh comes back already placed
  (e.g. replicated) as the trainer expects.

* A checkpoint that cannot be read back (a file truncated or deleted by a
  crash on a file system without atomic rename, a disk error) is *broken*:
  :meth:`Checkpointer.restore` of the latest step then warns, naming it, and
  falls back to the newest intact checkpoint; :meth:`set_aside_broken` moves
  the broken ones to ``<directory>/broken/`` so that the next saves are not
  skipped as "older than the latest". With no intact checkpoint left it raises
  :class:`CheckpointError` instead of starting over. A checkpoint of another
  model (different tree or shapes) is not broken:
  :class:`CheckpointMismatchError`.

Multi-host runs: every process must call :meth:`save`, :meth:`restore`,
:meth:`wait` and :meth:`close` with the same arguments; orbax coordinates the
processes (barriers, the primary process writes metadata and renames the
directory).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

_log = logging.getLogger(__name__)

BROKEN_DIRNAME = "broken"


class CheckpointError(RuntimeError):
  """No checkpoint (or not the requested one) can be read back."""


class CheckpointMismatchError(ValueError):
  """A checkpoint holds another tree or other shapes than the restore target
  (it was written for another model or dataset)."""


def _is_structure_mismatch(error: Exception) -> bool:
  # Orbax reports a tree that differs from the target as a ValueError
  # ("Structure mismatch: ...", "... tree structures do not match"); a broken
  # file gives tensorstore/JSON/OS errors instead.
  text = str(error).lower()
  return isinstance(error, ValueError) and (
      "structure mismatch" in text or "structures do not match" in text)


class Checkpointer:
  """Saves/restores a training-state pytree in `directory` with orbax CheckpointManager.

  Checkpoints live in ``<directory>/<step>``. At most ``max_to_keep`` of them
  are kept; older ones are deleted after a newer save completes.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2,
               read_only: bool = False):
    """Opens (and creates, if needed) the checkpoint directory.

    Args:
      directory: where checkpoints are written. Relative paths are made
        absolute (orbax requires absolute paths).
      max_to_keep: number of most recent checkpoints to keep (>= 1).
      read_only: open an existing directory for restoring only: nothing is
        created, and the temporary directory of a save in flight (e.g. by a
        training run still writing to this workdir) is left alone.

    Raises:
      ValueError: if ``max_to_keep`` < 1.
      FileNotFoundError: if ``read_only`` and ``directory`` does not exist.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.read_only = read_only
    if read_only:
      if not os.path.isdir(self.directory):
        raise FileNotFoundError(f"No checkpoint directory {self.directory}.")
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep,
          create=True,
          # Removes `<step>.orbax-checkpoint-tmp` directories that an
          # interrupted run left behind; they never count as checkpoints.
          cleanup_tmp_directories=True,
          enable_async_checkpointing=True,
      )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    # Orbax removes the leftover temporary directories in a background thread
    # and only waits for it at the first save. Waiting here keeps that file
    # system work from overlapping whatever runs next (data loading, and in
    # tests tfds's mock file system, which redirects every path while it
    # builds a dataset and made the thread fail).
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()
    # Steps the last `restore()` of the latest checkpoint found broken,
    # newest first, each with its error.
    self.broken_steps: list[tuple[int, str]] = []

  def latest_step(self) -> int | None:
    """Returns the newest saved step, or None if there is no checkpoint.

    A save still in flight in this process already counts (restoring it waits
    for it to finish); checkpoints that another run left half-written do not.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Returns the saved steps in increasing order."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree) -> None:
    """Starts saving `state` as checkpoint `step` (asynchronously).

    The arrays are copied before this returns, so the caller may keep
    updating (or donating) `state` right away. Call :meth:`wait` (or
    :meth:`close`) before the program exits to make the save durable.

    Saving a step that is not newer than the latest checkpoint (e.g. the same
    step twice, which happens when the final step is also a checkpoint step)
    is skipped: the existing checkpoint is kept as it is.

    Args:
      step: training step the state belongs to.
      state: pytree of jax.Arrays / numpy arrays (replicated or sharded
        jax.Arrays are fine; every process of a multi-host run must call this).
    """
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only; cannot save.")
    step = int(step)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      # CheckpointManager would skip this too (should_save is False); doing it
      # here makes the behaviour explicit and logged rather than silent.
      _log.info("Checkpoint for step %d not saved: step %d already saved "
                "in %s.", step, latest, self.directory)
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, target: PyTree, step: int | None = None) -> PyTree:
    """Restores checkpoint `step` (default: the newest intact one).

    Args:
      target: pytree with the structure of the saved state (e.g. a freshly
        initialised TrainState). Only its structure, shapes, dtypes and, for
        jax.Array leaves, shardings are used; its values are ignored. Leaves
        that are numpy arrays come back as numpy arrays.
      step: checkpoint to restore; None restores the latest one that can be
        read: a newer broken one is logged as a warning, recorded in
        `broken_steps` (newest first) and skipped.

    Returns:
      A pytree with `target`'s structure whose leaves hold the saved values
      bit-for-bit.

    Raises:
      FileNotFoundError: if `directory` has no checkpoint at all, or none for
        `step`.
      CheckpointError: checkpoint `step` (or, for None, every checkpoint) is
        broken; the message names each one and its error.
      CheckpointMismatchError: the checkpoint's tree or array shapes differ
        from `target`'s (another model or dataset); never taken for broken.
    """
    # A save of this very step may still be running in the background.
    self.wait()
    self.broken_steps = []
    steps = self.all_steps()
    if step is not None:
      step = int(step)
      if step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.directory} "
            f"(available steps: {steps}).")
      try:
        return self._restore_step(target, step)
      except CheckpointError as error:
        raise CheckpointError(
            f"Checkpoint {self._step_dir(step)} is broken: {error}") from None
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
    for candidate in reversed(steps):
      try:
        restored = self._restore_step(target, candidate)
      except CheckpointError as error:
        self.broken_steps.append((candidate, str(error)))
        _log.warning("Checkpoint %s is broken and is skipped (%s).",
                     self._step_dir(candidate), error)
        continue
      if self.broken_steps:
        _log.warning("Restored step %d from %s, the newest intact checkpoint.",
                     candidate, self.directory)
      return restored
    details = "; ".join(f"step {s}: {e}" for s, e in self.broken_steps)
    raise CheckpointError(
        f"None of the checkpoints in {self.directory} can be read back "
        f"({details}). To start again from step 0, move that directory aside "
        "(or delete it), or pass a new --workdir.")

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _restore_step(self, target: PyTree, step: int) -> PyTree:
    """Restores `step`; CheckpointError when it cannot be read."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # pylint: disable=broad-except
      if _is_structure_mismatch(error):
        raise CheckpointMismatchError(
            f"Checkpoint {self._step_dir(step)} holds another tree than the "
            f"configured run's state (another model?): "
            f"{str(error).splitlines()[0]}") from None
      # Whatever orbax/tensorstore raise for a missing or truncated file.
      message = " ".join(str(error).split())[:300]
      raise CheckpointError(f"{type(error).__name__}: {message}") from None
    # Orbax restores a numpy-target leaf with the *saved* shape; a different
    # shape means another model or dataset, never a value to train on.
    for path, want, got in zip(
        [jax.tree_util.keystr(p) for p, _ in
         jax.tree_util.tree_flatten_with_path(target)[0]],
        jax.tree.leaves(target), jax.tree.leaves(restored)):
      if np.shape(want) != np.shape(got):
        raise CheckpointMismatchError(
            f"Checkpoint {self._step_dir(step)} holds {path} with shape "
            f"{np.shape(got)}, but the configured run needs {np.shape(want)} "
            "(another model, width or dataset).")
    # A ShapeDtypeStruct without sharding is restored as a jax.Array on the
    # default device; give numpy targets numpy results so the restored tree
    # really has the target's leaf types.
    return jax.tree.map(_match_leaf_type, target, restored)

  def set_aside_broken(self) -> list[str]:
    """Moves the checkpoints the last restore found broken out of the way.

    Each goes to ``<directory>/broken/<step>`` (kept for inspection, never
    deleted), so that later saves of those steps are not skipped and
    `max_to_keep` does not delete the intact ones in their favour. In a
    multi-process run, process 0 moves them and every process waits for it.

    Returns:
      The new paths.
    """
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only; cannot move "
                         "broken checkpoints.")
    moved = []
    for step, _ in self.broken_steps:
      destination = os.path.join(self.directory, BROKEN_DIRNAME, str(step))
      suffix = 1
      while os.path.exists(destination):
        destination = os.path.join(self.directory, BROKEN_DIRNAME,
                                   f"{step}.{suffix}")
        suffix += 1
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(self._step_dir(step), destination)
        _log.warning("Moved broken checkpoint %s to %s.", self._step_dir(step),
                     destination)
      moved.append(destination)
    if moved:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices("sage_jax_set_aside_broken")
      self._manager.reload()
    self.broken_steps = []
    return moved

  def wait(self) -> None:
    """Blocks until every pending save is fully written and committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _match_leaf_type(target_leaf: Any, restored_leaf: Any) -> Any:
  """Returns `restored_leaf` as a numpy array if `target_leaf` is one."""
  if isinstance(target_leaf, np.ndarray):
    return np.asarray(restored_leaf)
  return restored_leaf
