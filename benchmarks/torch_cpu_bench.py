"""This project's train step beside a plain PyTorch one, on the same CPU.

    pip install torch --index-url https://download.pytorch.org/whl/cpu   # optional
    python benchmarks/torch_cpu_bench.py [--batch 128] [--width 64] [--steps 5]
                                         [--threads N] [--skip_torch]
                                         [--xla_variants default,ynn_conv]
    # On a shared machine: one core each, no OpenMP barrier stalls.
    taskset -c 1 python benchmarks/torch_cpu_bench.py --threads 1

PyTorch is an optional benchmark dependency, not a project one; without it
(or with --skip_torch) only this project's steps are timed.

PreActResNet18 on 32x32x3 images, one device, float32. Four steps:

* ``torch vanilla``: a PyTorch PreActResNet18 written here with the same
  shapes as ``sage_jax.models.preactresnet18`` (stem 3x3 conv, 2+2+2+2
  pre-activation blocks 64/128/256/512, no final BN, average pool, linear),
  channels-first as PyTorch runs it; forward, backward of BCE(softmax),
  SGD (Nesterov, momentum 0.9, weight decay 1e-4) step.
* ``torch sage``: a SAGE-like two-pass step: a clean forward/backward that
  also gives dL/dx, the saliency (|dL/dx| summed over channels, 5x5 Gaussian
  blur), a saliency mask mixing each image with a shifted partner (a few
  sampled shifts scored), the mixed forward/backward, and the optimizer step
  on (1 - 0.7) g_clean + 0.7 g_mix. Not the released code: the same work in
  the same order, so the ratio to this project's SAGE step is meaningful.
* ``jax vanilla`` / ``jax sage``: this project's compiled train steps
  (`sage_jax.train`, method 'vanilla' and 'sage' with its defaults), as
  `benchmarks/step_bench.py` times them.

Everything is compiled / warmed up first; then each round times one step of
each (interleaved, so the machine's drifts hit all alike) and the table shows
the median over rounds and the ratio jax / torch. ``--xla_variants`` also
times this project's steps compiled with other XLA:CPU settings (see
``XLA_VARIANTS``; ``ynn_conv`` is jaxlib's own default, without
``config.xla_cpu_eigen_convolutions``); XLA flags (``XLA_FLAGS=--xla_cpu_...``) apply as usual
through the environment.

When other processes load the machine, PyTorch's multi-threaded (OpenMP)
steps stall at every barrier whose threads are not all scheduled, and its
times swing by several x; pin the benchmark to one core (``taskset -c 1``,
``--threads 1``) for ratios that mean something there.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=wrong-import-position

import common  # pylint: disable=wrong-import-position

MIX_GRAD_WEIGHT = 0.7       # η of SAGE's default config
NUM_SHIFTS = 10             # ~1% of the 32x32 offsets, SAGE's sampled search
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def import_torch():
  """torch, or SystemExit with how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise SystemExit(
        "PyTorch is not installed; it is an optional benchmark dependency: "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu "
        "(or run with --skip_torch to time only this project's steps)."
    ) from error
  return torch


# --- The PyTorch side ----------------------------------------------------------------


def build_torch_model(torch, width: int, num_classes: int):
  """A PreActResNet18 with sage_jax.models.preactresnet18's shapes."""
  nn = torch.nn
  functional = torch.nn.functional

  class PreActBlock(nn.Module):
    """relu(bn1) -> conv1 (stride) -> relu(bn2) -> conv2, + shortcut."""

    def __init__(self, in_channels, channels, stride):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(in_channels)
      self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(channels)
      self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
      self.shortcut = (nn.Conv2d(in_channels, channels, 1, stride, bias=False)
                       if stride != 1 or in_channels != channels else None)

    def forward(self, x):
      preact = functional.relu(self.bn1(x))
      # The projection reads the pre-activated input, as in the reference.
      shortcut = x if self.shortcut is None else self.shortcut(preact)
      out = self.conv1(preact)
      out = self.conv2(functional.relu(self.bn2(out)))
      return out + shortcut

  class PreActResNet18(nn.Module):

    def __init__(self):
      super().__init__()
      self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
      blocks, in_channels = [], width
      for stage, stride in enumerate((1, 2, 2, 2)):
        channels = width * 2 ** stage
        for block in range(2):
          blocks.append(PreActBlock(in_channels, channels,
                                    stride if block == 0 else 1))
          in_channels = channels
      self.blocks = nn.Sequential(*blocks)
      self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x):
      out = self.blocks(self.stem(x))
      return self.head(out.mean(dim=(2, 3)))

  return PreActResNet18()


def torch_bce_softmax(torch, logits, targets):
  """BCE(softmax(logits), targets), the project's default loss."""
  probabilities = torch.softmax(logits, dim=1)
  return torch.nn.functional.binary_cross_entropy(probabilities, targets)


def _gaussian_kernel(torch, size: int = 5, sigma: float = 1.0):
  offsets = torch.arange(size, dtype=torch.float32) - size // 2
  line = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
  line = line / line.sum()
  return (line[:, None] * line[None, :])[None, None]  # (1, 1, k, k)


def make_torch_steps(torch, width: int, num_classes: int, batch: int):
  """{'torch vanilla': step(), 'torch sage': step()}; each runs one step."""
  functional = torch.nn.functional
  torch.manual_seed(0)
  model = build_torch_model(torch, width, num_classes).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                              nesterov=True, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  images_uint8 = torch.from_numpy(
      rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8))
  labels = torch.from_numpy(rng.integers(0, num_classes, batch))
  mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
  kernel = _gaussian_kernel(torch)
  parameters = list(model.parameters())

  def normalized():
    return (images_uint8.float() / 255.0 - mean) / std

  def vanilla():
    targets = functional.one_hot(labels, num_classes).float()
    loss = torch_bce_softmax(torch, model(normalized()), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()

  def sage():
    x = normalized().requires_grad_(True)
    targets = functional.one_hot(labels, num_classes).float()
    optimizer.zero_grad(set_to_none=True)
    clean_loss = torch_bce_softmax(torch, model(x), targets)
    clean_loss.backward()
    clean_grads = [p.grad.detach().clone() for p in parameters]
    with torch.no_grad():
      saliency = functional.conv2d(x.grad.abs().sum(1, keepdim=True), kernel,
                                   padding=kernel.shape[-1] // 2)
      saliency = saliency / saliency.sum(dim=(2, 3), keepdim=True)
      lam = torch.distributions.Beta(1.0, 1.0).sample((batch, 1, 1, 1)) * 0.6
      perm = torch.randperm(batch)
      # Sampled search: score a few shifts of the partner, keep the one whose
      # saliency overlaps the image's least.
      shifts = torch.randint(-16, 17, (NUM_SHIFTS, 2)).tolist()
      scores = torch.stack([(saliency * torch.roll(saliency[perm], s, (2, 3)))
                            .sum(dim=(1, 2, 3)) for s in shifts])
      best = scores.argmin(0)
      partner_images = torch.empty_like(x)
      partner_saliency = torch.empty_like(saliency)
      for index, shift in enumerate(shifts):
        chosen = best == index
        if chosen.any():
          rolled = torch.roll(x[perm], shift, (2, 3))
          partner_images[chosen] = rolled[chosen]
          partner_saliency[chosen] = torch.roll(saliency[perm], shift,
                                                (2, 3))[chosen]
      own = (1 - lam) * saliency
      mask = own / (own + lam * partner_saliency + 1e-8)
      mixed = mask * x.detach() + (1 - mask) * partner_images
      weight = mask.mean(dim=(1, 2, 3))[:, None]
      mixed_targets = weight * targets + (1 - weight) * targets[perm]
    optimizer.zero_grad(set_to_none=True)
    mix_loss = torch_bce_softmax(torch, model(mixed), mixed_targets)
    mix_loss.backward()
    with torch.no_grad():
      for parameter, clean in zip(parameters, clean_grads):
        parameter.grad.mul_(MIX_GRAD_WEIGHT).add_(clean,
                                                  alpha=1 - MIX_GRAD_WEIGHT)
    optimizer.step()
    return mix_loss.item()

  return {"torch vanilla": vanilla, "torch sage": sage}


def timed(step):
  """() -> (wall seconds, process CPU seconds) of one call of step()."""
  def run_once() -> tuple:
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - start, time.process_time() - start_cpu
  return run_once


# --- This project's side --------------------------------------------------------------


# Named XLA:CPU settings for --xla_variants, each (config
# `xla_cpu_eigen_convolutions`, extra compile options), compiled per variant
# so that they are timed side by side in one process. See
# `sage_jax.train.EIGEN_CONVOLUTION_OPTIONS` for why the default differs
# from jaxlib's.
XLA_VARIANTS = {
    # This project's default on CPU: Eigen convolutions, YNNPACK dots and
    # reductions.
    "default": (True, {}),
    # jaxlib's own default: YNNPACK also for the convolutions.
    "ynn_conv": (False, {}),
    # No YNNPACK at all: Eigen convolutions, XLA reductions.
    "no_ynn": (False, {"xla_cpu_experimental_ynn_fusion_type": ""}),
}


def compile_jax_step(config, mesh, compiler_options: dict, initial_state,
                     num_classes: int):
  """(run_once, initial_state) of this project's train step, also compiled
  with the extra `compiler_options`; as `common.compile_train_step`, warmed
  up."""
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  parts = train.create_components(config, mesh, num_classes=num_classes,
                                  mean=(0.5,) * 3, std=(0.25,) * 3,
                                  steps_per_epoch=500)
  if initial_state is None:
    initial_state = jax.device_get(jax.jit(
        lambda: train.init_state(config, parts.model, parts.tx, (32, 32, 3)))())
  rng = np.random.default_rng(0)
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec(train.AXIS))
  images = jax.device_put(
      rng.integers(0, 256, (config.batch_size, 32, 32, 3), dtype=np.uint8),
      sharding)
  labels = jax.device_put(
      rng.integers(0, num_classes, config.batch_size).astype(np.int32),
      sharding)
  carry = [train.to_device_state(initial_state, mesh)]
  step = parts.train_step.lower(carry[0], images, labels).compile(
      compiler_options=compiler_options or None)

  def run_once():
    carry[0], metrics = step(carry[0], images, labels)
    jax.block_until_ready(metrics)

  run_once()  # warm-up
  return run_once, initial_state


def make_jax_steps(width: int, num_classes: int, batch: int,
                   variants=("default",)) -> dict:
  """{'jax vanilla[ variant]': step(), ...}, compiled and warmed up."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  steps, initial_state = {}, None
  for method in ("vanilla", "sage"):
    config = common.make_config(method, model="preactresnet18", width=width,
                                batch=batch)
    for variant in variants:
      label = f"jax {method}" + ("" if variant == "default" else f" {variant}")
      config.xla_cpu_eigen_convolutions, options = XLA_VARIANTS[variant]
      steps[label], initial_state = compile_jax_step(
          config, mesh, options, initial_state, num_classes)
  return steps


def interleaved_times(runners: dict, rounds: int) -> dict:
  """name -> array (rounds, 2) of (wall, CPU) seconds; one call of each
  runner per round, so drifts of the machine hit every runner alike."""
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run_once in runners.items():
      times[name].append(run_once())
  return {name: np.asarray(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5,
                      help="interleaved rounds (median over them)")
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--threads", type=int, default=None,
                      help="PyTorch intra-op threads (default: its own, the "
                           "number of cores)")
  parser.add_argument("--xla_variants", default="default",
                      help="comma-separated names of XLA compile options to "
                           f"time side by side: {', '.join(XLA_VARIANTS)}")
  parser.add_argument("--skip_torch", action="store_true",
                      help="time only this project's steps")
  args = parser.parse_args()
  if args.batch < 2 or args.width < 1 or args.steps < 1:
    parser.error("--batch must be >= 2, --width and --steps >= 1")
  variants = args.xla_variants.split(",")
  unknown = [v for v in variants if v not in XLA_VARIANTS]
  if unknown:
    parser.error(f"unknown --xla_variants {unknown}; known: "
                 f"{', '.join(XLA_VARIANTS)}")

  import jax  # pylint: disable=g-import-not-at-top
  runners = {}
  header = [f"jax {jax.__version__} on "
            f"{common.describe_device(jax.devices()[0])}, "
            f"{len(os.sched_getaffinity(0))} usable",
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"]
  if not args.skip_torch:
    torch = import_torch()
    if args.threads:
      torch.set_num_threads(args.threads)
    header.append(f"torch {torch.__version__}, {torch.get_num_threads()} "
                  "threads")
    for name, step in make_torch_steps(torch, args.width, args.num_classes,
                                       args.batch).items():
      step()  # warm-up (oneDNN primitive creation, allocator)
      runners[name] = timed(step)
  for name, step in make_jax_steps(args.width, args.num_classes, args.batch,
                                   variants).items():
    runners[name] = timed(step)
  print("; ".join(header))
  print(f"preactresnet18 width {args.width}, batch {args.batch}, 32x32x3, "
        f"float32, one device; {args.steps} interleaved rounds")
  times = interleaved_times(runners, args.steps)

  # Ratios per round (both sides of a ratio ran back to back), then the
  # median: robust to load that comes and goes between rounds. The ratio of
  # the fastest rounds estimates the quiet machine; CPU seconds (all threads
  # of this process) are the least sensitive to other processes.
  print(f"{'step':24s} {'wall s':>7s} {'min':>6s} {'max':>6s} {'cpu s':>6s} "
        f"{'/torch':>7s} {'min/min':>7s} {'cpu/torch':>9s}")
  for name, samples in times.items():
    wall, cpu = samples[:, 0], samples[:, 1]
    ratios = ""
    torch_name = "torch " + name.split()[1]
    if name.startswith("jax") and torch_name in times:
      torch_wall, torch_cpu = times[torch_name][:, 0], times[torch_name][:, 1]
      ratios = (f"{np.median(wall / torch_wall):7.2f} "
                f"{wall.min() / torch_wall.min():7.2f} "
                f"{np.median(cpu / torch_cpu):9.2f}")
    print(f"{name:24s} {np.median(wall):7.3f} {wall.min():6.3f} "
          f"{wall.max():6.3f} {np.median(cpu):6.2f} {ratios}")
  for name in times:
    if " sage" in name:
      vanilla = name.replace(" sage", " vanilla")
      overhead = np.median(times[name][:, 0] / times[vanilla][:, 0])
      print(f"{name} / {vanilla}: {overhead:.2f}")


if __name__ == "__main__":
  main()
