"""One command for accelerator figures: every method's train step, on this machine.

    python benchmarks/device_report.py [--out device_report] [--steps 20]
    python benchmarks/device_report.py --tiny --out /tmp/report   # CPU, seconds

In one process, on the devices JAX sees, measures and writes a Markdown
(`<out>.md`) and a JSON (`<out>.json`) report:

* for two settings, PreActResNet18 on CIFAR-10 at batch 100 and ResNeXt29-4-24
  on CIFAR-100 at batch 100 (the supplement's Table 3), and for every method
  registered in `sage_jax.methods` (new methods appear by themselves): the
  jitted train-step time on one device, images/s, the ratio to vanilla, the
  peak device memory of one step (from XLA's memory analysis of the compiled
  step), and the projected hours for 300 epochs of 50,000 images beside the
  supplement's T4 hours, in float32 and in bfloat16 compute
  (`config.half_precision`), with the bf16 speed-up;
* when more than one device is visible, weak scaling of the vanilla and the
  SAGE step over the first 1, 2, 4, ... and all devices at a fixed per-device
  batch: step time, images/s and efficiency t_1 / t_n.

Steps run on random uint8 images (the step's cost does not depend on the
pixels). The steps of one setting and precision are timed interleaved (one
step of each method per round, median over rounds), so drifts of the machine
affect every method alike. `--tiny` shrinks everything (PreActResNet8 of
width 4 on 8x8 images, batch 8, one timed step) so that the script runs on a
CPU in CI; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from sage_jax import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from sage_jax import published  # pylint: disable=g-import-not-at-top,wrong-import-position
from sage_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from scaling import device_counts  # pylint: disable=g-import-not-at-top,wrong-import-position

EPOCHS = 300
TRAIN_IMAGES = 50_000
PRECISIONS = ("fp32", "bf16")
SCALING_METHODS = ("vanilla", "sage")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One model/data setting of the report.

  Attributes:
    label: the row group's title.
    dataset: the published table it is compared with ("cifar10"/"cifar100").
    model: `config.model.name`.
    width: `config.model.width` (0 = the architecture's default).
    num_classes: logits.
    batch: global batch on one device.
    image_size: side of the square images.
  """
  label: str
  dataset: str
  model: str
  width: int
  num_classes: int
  batch: int
  image_size: int


FULL_SETTINGS = (
    Setting("PreActResNet18, CIFAR-10, batch 100", "cifar10", "preactresnet18",
            0, 10, 100, 32),
    Setting("ResNeXt29-4-24, CIFAR-100, batch 100", "cifar100", "resnext29_4_24",
            0, 100, 100, 32),
)
TINY_SETTINGS = (
    Setting("tiny PreActResNet8 (width 4), 10 classes, 8x8, batch 8", "cifar10",
            "preactresnet8", 4, 10, 8, 8),
    Setting("tiny PreActResNet8 (width 4), 100 classes, 8x8, batch 8",
            "cifar100", "preactresnet8", 4, 100, 8, 8),
)


def method_names(requested: str | None = None) -> tuple:
  """Every registered method (vanilla first), or the comma-separated subset.

  Raises:
    ValueError: an unknown name, or a subset without vanilla (the ratios are
      to vanilla).
  """
  names = tuple(methods.METHOD_NAMES)
  if requested:
    wanted = tuple(n.strip() for n in requested.split(",") if n.strip())
    unknown = [n for n in wanted if n not in names]
    if unknown:
      raise ValueError(f"--methods: unknown {unknown}; registered: {', '.join(names)}.")
    if "vanilla" not in wanted:
      raise ValueError("--methods must include vanilla (ratios are to vanilla).")
    names = tuple(n for n in names if n in wanted)
  return ("vanilla",) + tuple(n for n in names if n != "vanilla")


def fitting_overrides(method: str, image_size: int) -> dict:
  """Overrides that let `method` run on image_size x image_size images.

  A method whose block holds `block_nums` (Puzzle Mix's grid sizes) keeps
  the ones that divide the image side.
  """
  defaults = methods.get_method(method).default_config
  block = defaults() if defaults is not None else {}
  if "block_nums" in block:
    fitting = tuple(n for n in block["block_nums"] if image_size % n == 0)
    return {f"{method}.block_nums": fitting}
  return {}


def make_config(method: str, setting: Setting, precision: str, batch: int):
  """The validated run config of `method` in `setting` at `precision`."""
  overrides = fitting_overrides(method, setting.image_size)
  overrides["half_precision"] = precision == "bf16"
  config = common.make_config(method, {}, model=setting.model,
                              width=setting.width, batch=batch)
  for field, value in overrides.items():
    if "." in field:
      section, name = field.split(".")
      config[section][name] = value
    else:
      config[field] = value
  return config


def projected_hours(seconds_per_step: float, batch: int) -> float:
  """Hours of 300 epochs of 50,000 images at this step's images/s."""
  return EPOCHS * TRAIN_IMAGES / (batch / seconds_per_step) / 3600


# (setting, precision) -> a fresh train state (host arrays): every method and
# device count of a setting starts from the same one, compiled only once.
_INITIAL_STATES = {}


def measure_setting(setting: Setting, names: tuple, precision: str,
                    device, steps: int) -> dict:
  """name -> {step_ms, images_per_s, peak_bytes, memory, projected_hours,
  ratio_to_vanilla} for one setting and precision on one device."""
  mesh = jax.sharding.Mesh(np.asarray([device]), (train.AXIS,))
  compiled = {}
  initial_state = _INITIAL_STATES.get((setting, precision))
  for name in names:
    config = make_config(name, setting, precision, setting.batch)
    start = time.perf_counter()
    compiled[name] = common.compile_train_step(
        config, mesh, setting.image_size, initial_state,
        num_classes=setting.num_classes)
    initial_state = _INITIAL_STATES[setting, precision] = compiled[name].initial_state
    print(f"  compiled {name} ({precision}) in {time.perf_counter() - start:.1f} s",
          flush=True)
  times = {name: [] for name in names}
  for _ in range(steps):
    for name, step in compiled.items():
      times[name].append(step.run_once())
  rows = {}
  for name in names:
    seconds = float(np.median(times[name]))
    memory = compiled[name].memory
    rows[name] = {
        "step_ms": 1000 * seconds,
        "images_per_s": setting.batch / seconds,
        "projected_hours": projected_hours(seconds, setting.batch),
        "peak_bytes": memory["peak"] if memory else None,
        "memory": memory,
    }
  vanilla = rows["vanilla"]["step_ms"]
  for row in rows.values():
    row["ratio_to_vanilla"] = row["step_ms"] / vanilla
  return rows


def measure_scaling(setting: Setting, names: tuple, devices: list,
                    steps: int) -> list:
  """Weak scaling rows: per method and device count n, the step at a global
  batch of n x setting.batch on the first n devices, in float32."""
  rows = []
  for name in names:
    base_seconds = None
    for n in device_counts(len(devices)):
      mesh = jax.sharding.Mesh(np.asarray(devices[:n]), (train.AXIS,))
      config = make_config(name, setting, "fp32", setting.batch * n)
      run = common.run_train_step(config, mesh, steps, setting.image_size,
                                  _INITIAL_STATES.get((setting, "fp32")),
                                  num_classes=setting.num_classes)
      _INITIAL_STATES[setting, "fp32"] = run.initial_state
      base_seconds = base_seconds or run.seconds
      rows.append({
          "method": name, "devices": n, "global_batch": setting.batch * n,
          "step_ms": 1000 * run.seconds,
          "images_per_s": setting.batch * n / run.seconds,
          "efficiency": base_seconds / run.seconds,
      })
      print(f"  scaling {name}: {n} device(s) {1000 * run.seconds:.1f} ms", flush=True)
  return rows


def published_hours(setting: Setting) -> dict:
  """method -> the supplement's T4 hours, when it published this model."""
  model, hours = published.T4_HOURS.get(setting.dataset, (None, {}))
  return dict(hours) if model == setting.model else {}


def _mib(value) -> str:
  return "–" if value is None else f"{value / 2**20:,.1f}"


def _num(value, fmt: str) -> str:
  return "–" if value is None else format(value, fmt)


def to_markdown(report: dict) -> str:
  """The report as Markdown (one table per setting, then scaling)."""
  device = report["device"]
  lines = [
      f"# Device report: {device['description']}",
      "",
      f"{device['count']} device(s), backend `{device['backend']}`, JAX "
      f"{device['jax_version']}; {report['date']}. Command: "
      f"`{report['command']}`.",
      "",
      "Train step of each method on one device, median of "
      f"{report['steps']} interleaved steps after compilation. Peak memory: "
      "per device, from XLA's memory analysis of the compiled step "
      f"({report['memory_source']}). Hours: 300 epochs of 50,000 images at the "
      "measured images/s; T4 hours: the supplement's Table 3 (one NVIDIA T4, "
      "PyTorch, fp32).",
  ]
  for setting in report["settings"]:
    lines += ["", f"## {setting['label']}", "",
              "| method | fp32 ms | images/s | / vanilla | peak MiB | hours (300 ep.) "
              "| T4 hours | T4 / vanilla | bf16 ms | bf16 / vanilla | bf16 peak MiB "
              "| bf16 speed-up |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    t4 = setting["published_t4_hours"]
    for name, row in setting["methods"].items():
      fp32, bf16 = row.get("fp32"), row.get("bf16")
      t4_hours = t4.get(name)
      t4_ratio = t4_hours / t4["vanilla"] if t4_hours and "vanilla" in t4 else None
      speedup = fp32["step_ms"] / bf16["step_ms"] if fp32 and bf16 else None
      lines.append(
          f"| {name} | {_num(fp32 and fp32['step_ms'], '.1f')} "
          f"| {_num(fp32 and fp32['images_per_s'], ',.0f')} "
          f"| {_num(fp32 and fp32['ratio_to_vanilla'], '.2f')} "
          f"| {_mib(fp32 and fp32['peak_bytes'])} "
          f"| {_num(fp32 and fp32['projected_hours'], '.2f')} "
          f"| {_num(t4_hours, '.2f')} | {_num(t4_ratio, '.2f')} "
          f"| {_num(bf16 and bf16['step_ms'], '.1f')} "
          f"| {_num(bf16 and bf16['ratio_to_vanilla'], '.2f')} "
          f"| {_mib(bf16 and bf16['peak_bytes'])} | {_num(speedup, '.2f')} |")
  lines += ["", "## Weak scaling", ""]
  if report["scaling"]:
    lines += [f"{report['scaling_setting']}, float32, fixed per-device batch; "
              "efficiency = t_1 / t_n (1.00 is perfect).", "",
              "| method | devices | global batch | step ms | images/s | efficiency |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in report["scaling"]:
      lines.append(f"| {row['method']} | {row['devices']} | {row['global_batch']} "
                   f"| {row['step_ms']:.1f} | {row['images_per_s']:,.0f} "
                   f"| {row['efficiency']:.2f} |")
  else:
    lines.append("One device visible: no scaling measured.")
  return "\n".join(lines) + "\n"


def build_report(settings, names: tuple, precisions: tuple, steps: int,
                 scaling_steps: int, command: str) -> dict:
  """Measures everything; returns the JSON-ready report."""
  devices = jax.devices()
  first = devices[0]
  report = {
      "device": {"backend": jax.default_backend(), "kind": first.device_kind,
                 "count": len(devices), "jax_version": jax.__version__,
                 "description": common.describe_device(first)},
      "date": datetime.date.today().isoformat(),
      "command": command,
      "steps": steps,
      "methods": list(names),
      "settings": [],
      "scaling": [],
      "scaling_setting": None,
  }
  sources = set()
  for setting in settings:
    print(f"{setting.label}", flush=True)
    per_method = {name: {} for name in names}
    for precision in precisions:
      rows = measure_setting(setting, names, precision, first, steps)
      for name, row in rows.items():
        per_method[name][precision] = row
        if row["memory"]:
          sources.add(row["memory"]["peak_source"])
    report["settings"].append({
        **dataclasses.asdict(setting),
        "methods": per_method,
        "published_t4_hours": published_hours(setting),
    })
  report["memory_source"] = (" / ".join(sorted(sources)) if sources
                             else "not reported by this backend")
  if len(devices) > 1:
    setting = settings[0]
    scaling_names = tuple(n for n in SCALING_METHODS if n in names)
    report["scaling"] = measure_scaling(setting, scaling_names, devices,
                                        scaling_steps)
    report["scaling_setting"] = setting.label
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="device_report",
                      help="writes <out>.md and <out>.json")
  parser.add_argument("--steps", type=int, default=20,
                      help="timed steps per method (after one warm-up step)")
  parser.add_argument("--scaling_steps", type=int, default=None,
                      help="timed steps per device count (default: --steps)")
  parser.add_argument("--methods", default=None,
                      help="comma-separated subset (must include vanilla); "
                           "default: every registered method")
  parser.add_argument("--precisions", default="fp32,bf16",
                      help="fp32, bf16 or both (comma-separated)")
  parser.add_argument("--settings", default="cifar10,cifar100",
                      help="which settings: cifar10 (PreActResNet18), cifar100 "
                           "(ResNeXt29-4-24) or both; scaling uses the first")
  parser.add_argument("--tiny", action="store_true",
                      help="tiny models and batches: checks the script on a CPU")
  args = parser.parse_args(argv)
  precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
  if not precisions or set(precisions) - set(PRECISIONS):
    parser.error(f"--precisions must name some of {PRECISIONS}.")
  if args.steps < 1:
    parser.error("--steps must be >= 1.")
  try:
    names = method_names(args.methods)
  except ValueError as error:
    parser.error(str(error))
  wanted = [name.strip() for name in args.settings.split(",") if name.strip()]
  available = {s.dataset: s for s in (TINY_SETTINGS if args.tiny else FULL_SETTINGS)}
  if not wanted or set(wanted) - set(available):
    parser.error(f"--settings must name some of {sorted(available)}.")
  settings = tuple(available[name] for name in wanted)
  command = " ".join(["python", "benchmarks/device_report.py"]
                     + list(sys.argv[1:] if argv is None else argv))
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(jax.devices())} device(s): {common.describe_device(jax.devices()[0])}",
        flush=True)
  report = build_report(settings, names, precisions, args.steps,
                        args.scaling_steps or args.steps, command)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  with open(f"{args.out}.json", "w") as f:
    json.dump(report, f, indent=1)
  markdown = to_markdown(report)
  with open(f"{args.out}.md", "w") as f:
    f.write(markdown)
  print(markdown)
  print(f"Wrote {args.out}.md and {args.out}.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
