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
    """Restores checkpoint `step` into the shape of `target`.

    Args:
      target: pytree with the structure of the saved state (e.g. a freshly
        initialised TrainState). Only its structure, shapes, dtypes and, for
        jax.Array leaves, shardings are used; its values are ignored. Leaves
        that are numpy arrays come back as numpy arrays.
      step: checkpoint to restore; None restores the latest one.

    Returns:
      A pytree with `target`'s structure whose leaves hold the saved values
      bit-for-bit.

    Raises:
      FileNotFoundError: if `directory` has no checkpoint at all, or none for
        `step`.
      ValueError: (from orbax) if the saved tree or array shapes do not match
        `target`.
    """
    # A save of this very step may still be running in the background.
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
    step = int(step)
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self.directory} "
          f"(available steps: {self.all_steps()}).")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract))
    # A ShapeDtypeStruct without sharding is restored as a jax.Array on the
    # default device; give numpy targets numpy results so the restored tree
    # really has the target's leaf types.
    return jax.tree.map(_match_leaf_type, target, restored)

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
