"""Tests for sage_jax.checkpointing: bit-exact round trips of a full TrainState."""
from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sage_jax.checkpointing import Checkpointer


@flax.struct.dataclass
class TrainState:
  """Same fields as the trainer's state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(6)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(3)(nn.relu(x))


def _optimizer():
  schedule = optax.cosine_decay_schedule(0.1, decay_steps=100)
  return optax.chain(optax.add_decayed_weights(1e-4),
                     optax.sgd(schedule, momentum=0.9, nesterov=True))


def _make_state(seed: int, num_updates: int) -> TrainState:
  """A TrainState after `num_updates` SGD steps, so every leaf is non-trivial
  (momentum trace non-zero, schedule count > 0, batch stats moved)."""
  model, tx = _TinyNet(), _optimizer()
  x = jax.random.normal(jax.random.key(seed), (8, 5))
  labels = jnp.arange(8) % 3
  variables = model.init(jax.random.key(seed + 1), x)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  def loss_fn(p, bs):
    logits, updates = model.apply({"params": p, "batch_stats": bs}, x,
                                  mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates["batch_stats"]

  for _ in range(num_updates):
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return TrainState(
      step=jnp.asarray(num_updates, jnp.int32), params=params,
      batch_stats=batch_stats, opt_state=opt_state,
      rng=jax.random.key_data(jax.random.key(seed + 2)))


@pytest.fixture(scope="module")
def state():
  return _make_state(seed=0, num_updates=2)


@pytest.fixture(scope="module")
def other_state():
  """Same structure as `state`, different values (used as restore target)."""
  return _make_state(seed=10, num_updates=3)


def _assert_bit_exact(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.dtype == e.dtype and a.shape == e.shape
    assert a.tobytes() == e.tobytes()


def test_state_fixture_is_nontrivial(state, other_state):
  # Guards the round-trip tests against vacuously comparing equal trees.
  assert isinstance(state.opt_state[0], optax.EmptyState)
  assert int(state.opt_state[1][1].count) == 2
  assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
      jax.tree.leaves(state), jax.tree.leaves(other_state)))


def test_round_trip_is_bit_exact(tmp_path, state, other_state):
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() is None
  ckpt.save(2, state)
  ckpt.close()

  # A new Checkpointer (as in a resumed run) finds and restores the state.
  reopened = Checkpointer(str(tmp_path / "ckpt"))
  assert reopened.latest_step() == 2
  restored = reopened.restore(other_state)
  reopened.close()
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[1][0], optax.TraceState)
  _assert_bit_exact(restored, state)


def test_restore_specific_step_and_max_to_keep(tmp_path, state, other_state):
  states = {1: other_state, 2: state, 3: other_state.replace(
      step=jnp.asarray(3, jnp.int32))}
  ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
  for step, s in states.items():
    ckpt.save(step, s)
  ckpt.wait()
  assert ckpt.latest_step() == 3
  assert ckpt.all_steps() == [2, 3]
  assert sorted(os.listdir(tmp_path)) == ["2", "3"]
  _assert_bit_exact(ckpt.restore(other_state, step=2), states[2])
  _assert_bit_exact(ckpt.restore(state), states[3])  # latest
  with pytest.raises(FileNotFoundError, match="step 1"):
    ckpt.restore(state, step=1)  # deleted by max_to_keep
  ckpt.close()


def test_saving_same_step_twice_keeps_first(tmp_path, state, other_state):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state)
    ckpt.save(5, other_state)  # must not raise
    ckpt.wait()
    assert ckpt.all_steps() == [5]
    _assert_bit_exact(ckpt.restore(other_state), state)


def test_missing_directory_raises(tmp_path, state):
  missing = tmp_path / "does_not_exist"
  with Checkpointer(str(missing)) as ckpt:
    with pytest.raises(FileNotFoundError, match=str(missing)):
      ckpt.restore(state)


def test_relative_path_is_made_absolute(tmp_path, monkeypatch, state):
  monkeypatch.chdir(tmp_path)
  with Checkpointer("rel_ckpt") as ckpt:
    assert ckpt.directory == str(tmp_path / "rel_ckpt")
    ckpt.save(1, state)
  assert os.path.isdir(tmp_path / "rel_ckpt" / "1")


def test_numpy_target_gives_numpy_leaves(tmp_path, state):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state)
    target = jax.tree.map(np.zeros_like, jax.tree.map(np.asarray, state))
    restored = ckpt.restore(target)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))
  _assert_bit_exact(restored, state)


def test_restore_onto_replicated_mesh(tmp_path, state, other_state):
  assert jax.device_count() == 8, "conftest.py should force 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",))
  replicated = NamedSharding(mesh, P())
  with Checkpointer(str(tmp_path)) as ckpt:
    # Save from replicated arrays, as the data-parallel trainer does.
    ckpt.save(7, jax.device_put(state, replicated))
    target = jax.device_put(other_state, replicated)
    restored = ckpt.restore(target)
  for leaf in jax.tree.leaves(restored):
    assert isinstance(leaf, jax.Array)
    assert leaf.sharding == replicated
  _assert_bit_exact(restored, state)


def test_read_only_restores_without_touching_the_directory(tmp_path, state,
                                                           other_state):
  directory = tmp_path / "ckpt"
  with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
    Checkpointer(str(directory), read_only=True)
  assert not directory.exists()  # nothing created
  with Checkpointer(str(directory)) as writer:
    writer.save(1, state)
  # A save in flight elsewhere leaves a temporary directory: keep it.
  in_flight = directory / "2.orbax-checkpoint-tmp"
  in_flight.mkdir()
  with Checkpointer(str(directory), read_only=True) as reader:
    assert reader.latest_step() == 1
    _assert_bit_exact(reader.restore(other_state), state)
    with pytest.raises(RuntimeError, match="read-only"):
      reader.save(3, state)
  assert in_flight.exists()
