"""sage_jax.datasets: when tfds data is used, downloaded, or refused.

No test touches the network: the reachability probe and the tfds builder are
replaced (monkeypatch), or the download host is pointed at a closed local
port. The README's quick-start run command is run offline, as written, and
must stop within 30 s with the instructions.
"""
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sage_jax import config as config_lib
from sage_jax import datasets
from sage_jax import input_pipeline as ip

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


class FakeBuilder:
  """The part of a tfds builder that `ensure_tfds` uses, recording calls."""

  def __init__(self, root, name, prepared=False):
    self.data_dir_root = str(root)
    self.data_dir = os.path.join(str(root), *name.split("/"), "1.0.0")
    self.prepared = prepared
    self.download_configs = []

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self, download_config=None):
    self.download_configs.append(download_config)
    self.prepared = True


@pytest.fixture
def fake(monkeypatch, tmp_path):
  """Replaces the builder and the probe; records what ensure_tfds asked."""
  state = {"builders": {}, "probes": [], "probe_result": None,
           "root": tmp_path / "tfds", "prepared": set()}

  def builder(name, data_dir):
    state.setdefault("data_dirs", []).append(data_dir)
    if name not in state["builders"]:
      state["builders"][name] = FakeBuilder(state["root"], name,
                                            prepared=name in state["prepared"])
    return state["builders"][name]

  def probe(url, timeout_s=datasets.PROBE_TIMEOUT_S):
    state["probes"].append((url, timeout_s))
    return state["probe_result"]

  monkeypatch.setattr(datasets, "_tfds_builder", builder)
  monkeypatch.setattr(datasets, "probe", probe)
  return state


# --------------------------------------------------------------- decisions --


def test_sources_match_the_installed_tfds_checksums():
  tfds = pytest.importorskip("tensorflow_datasets")
  folder = pathlib.Path(tfds.__file__).parent / "url_checksums"
  for name, source in datasets.TFDS_SOURCES.items():
    rows = [line.split("\t") for line in (folder / f"{name}.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert [(r[0], int(r[1]), r[3].strip()) for r in rows] == [
        (source.url, source.size_bytes, source.filename)], name


def test_prepared_dataset_is_used_without_network(fake):
  fake["prepared"].add("cifar10")
  result = datasets.ensure_tfds("cifar10", "")
  assert result.action == "found"
  assert fake["probes"] == []
  assert fake["builders"]["cifar10"].download_configs == []
  assert fake["data_dirs"] == [None]  # "" means tfds's default


def test_missing_and_reachable_is_downloaded(fake):
  fake["probe_result"] = None
  result = datasets.ensure_tfds("cifar100", "/somewhere", timeout_s=2.5)
  builder = fake["builders"]["cifar100"]
  assert result == datasets.PrepareResult("cifar100", builder.data_dir, "downloaded")
  assert fake["probes"] == [(datasets.TFDS_SOURCES["cifar100"].url, 2.5)]
  assert len(builder.download_configs) == 1
  # tfds's GCS mirror is not tried: the download comes from the original host.
  assert builder.download_configs[0].try_download_gcs is False
  assert fake["data_dirs"] == ["/somewhere"]


def test_missing_and_unreachable_fails_fast_with_instructions(fake):
  fake["probe_result"] = "www.cs.toronto.edu:443 did not answer within 5 s"
  with pytest.raises(datasets.DatasetUnavailableError) as error:
    datasets.ensure_tfds("cifar10")
  message = str(error.value)
  root = fake["root"]
  assert isinstance(error.value, FileNotFoundError)
  for part in ("'cifar10'", f"tfds data dir {root}",
               f"looked for {fake['builders']['cifar10'].data_dir}",
               "did not answer within 5 s", "tfds build cifar10 --data_dir DIR",
               f"copy DIR/cifar10 to {root / 'cifar10'}",
               f"{root / 'downloads' / 'manual'}/", "cifar-10-binary.tar.gz",
               "dataset.name=image_folder", "python -m sage_jax.datasets subset"):
    assert part in message, (part, message)
  assert fake["builders"]["cifar10"].download_configs == []


def test_download_false_errors_without_probing(fake):
  with pytest.raises(datasets.DatasetUnavailableError, match="dataset.download=False"):
    datasets.ensure_tfds("cifar10", download=False)
  assert fake["probes"] == []
  assert fake["builders"]["cifar10"].download_configs == []


@pytest.mark.parametrize("download", [True, False])
def test_manual_archive_is_prepared_without_network(fake, download):
  manual = fake["root"] / "downloads" / "manual"
  manual.mkdir(parents=True)
  (manual / "cifar-10-binary.tar.gz").write_bytes(b"")
  result = datasets.ensure_tfds("cifar10", download=download)
  assert result.action == "manual"
  assert fake["probes"] == []
  assert len(fake["builders"]["cifar10"].download_configs) == 1


def test_cifar10_c_config_names_its_source(fake):
  fake["probe_result"] = "zenodo.org:443: refused"
  with pytest.raises(datasets.DatasetUnavailableError) as error:
    datasets.ensure_tfds("cifar10_corrupted/fog_3")
  assert fake["probes"][0][0] == datasets.TFDS_SOURCES["cifar10_corrupted"].url
  for part in ("tfds build cifar10_corrupted", "CIFAR-10-C.tar", "--corrupted_dir"):
    assert part in str(error.value)


def test_bad_arguments():
  with pytest.raises(ValueError, match="name must be one of"):
    datasets.ensure_tfds("imagenet")
  with pytest.raises(TypeError, match="name"):
    datasets.ensure_tfds(None)
  with pytest.raises(TypeError, match="download must be True or False"):
    datasets.ensure_tfds("cifar10", download="yes")


def test_real_builder_offline_decisions(monkeypatch, tmp_path):
  # The real tfds builder (no fake): missing, probe says unreachable.
  monkeypatch.setattr(datasets, "probe", lambda url, timeout_s: "host: down")
  start = time.monotonic()
  with pytest.raises(datasets.DatasetUnavailableError) as error:
    datasets.ensure_tfds("cifar10", str(tmp_path / "tfds"))
  assert "host: down" in str(error.value)
  assert str(tmp_path / "tfds" / "cifar10" / "3.0.2") in str(error.value)
  with pytest.raises(datasets.DatasetUnavailableError, match="download=False"):
    datasets.ensure_tfds("cifar10", str(tmp_path / "tfds"), download=False)
  assert time.monotonic() - start < 20
  assert not (tmp_path / "tfds").exists()  # nothing written


def test_mocked_tfds_download_then_load(monkeypatch, tmp_path):
  # Under tfds's mock the builder's download_and_prepare is a no-op and
  # as_dataset serves random examples: the whole download path runs offline.
  tfds = pytest.importorskip("tensorflow_datasets")
  probes = []
  monkeypatch.setattr(datasets, "probe",
                      lambda url, timeout_s: probes.append(url) or None)
  with tfds.testing.mock_data(num_examples=6):
    result = datasets.ensure_tfds("cifar10", str(tmp_path))
    data = ip.load_dataset("cifar10", str(tmp_path), download=True)
  assert result.action == "downloaded"
  assert probes and set(probes) == {datasets.TFDS_SOURCES["cifar10"].url}
  assert data.train_images.shape == (6, 32, 32, 3)


def test_load_dataset_download_flag(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(datasets, "ensure_tfds",
                      lambda name, data_dir, download: calls.append(
                          (name, data_dir, download)))
  with pytest.raises(FileNotFoundError):
    ip.load_dataset("cifar10", str(tmp_path), download=True)
  assert calls == [("cifar10", str(tmp_path), True)]
  calls.clear()
  with pytest.raises(FileNotFoundError, match="download=False"):
    ip.load_dataset("cifar10", str(tmp_path))
  assert calls == []


# ------------------------------------------------------------- run helper --


def run_config(**dataset):
  config = config_lib.base_config()
  config.dataset.update(dataset)
  return config


def test_prepare_for_run(fake):
  fake["prepared"].add("cifar100")
  assert datasets.prepare_for_run(run_config(name="cifar100")) == []
  assert list(fake["builders"]) == ["cifar100"]
  # image folders need no tfds at all
  fake["builders"].clear()
  assert datasets.prepare_for_run(run_config(name="image_folder",
                                             data_dir="/x")) == []
  assert fake["builders"] == {}
  # dataset.download=False reaches ensure_tfds (field added when absent)
  config = run_config(name="cifar10")
  config.dataset.download = False
  with pytest.raises(datasets.DatasetUnavailableError, match="download=False"):
    datasets.prepare_for_run(config)
  assert fake["probes"] == []


def test_prepare_for_run_cifar10_c_offline_is_a_warning(fake, monkeypatch):
  names = [f"cifar10_corrupted/fog_{s}" for s in (1, 2, 3)]
  monkeypatch.setattr(datasets, "cifar10_c_names", lambda: names)
  fake["prepared"].update(["cifar10", names[0]])
  fake["probe_result"] = "zenodo.org:443: no route"
  warnings = datasets.prepare_for_run(run_config(name="cifar10"),
                                      evaluate_corruptions=True)
  assert len(warnings) == 1 and "CIFAR-10-C will be reported as not available" in warnings[0]
  assert "zenodo.org:443: no route" in warnings[0]
  # One probe: the first missing config; the others are not tried.
  assert len(fake["probes"]) == 1
  assert list(fake["builders"]) == ["cifar10", names[0], names[1]]
  # Reachable: every missing config is prepared.
  fake["probe_result"] = None
  assert datasets.prepare_for_run(run_config(name="cifar10"),
                                  evaluate_corruptions=True) == []
  assert all(fake["builders"][n].prepared for n in names)


def test_cifar10_c_names_are_the_95_tfds_configs():
  names = datasets.cifar10_c_names()
  assert len(names) == 95 == len(set(names))
  assert "cifar10_corrupted/gaussian_noise_5" in names


# ------------------------------------------------------------------ probe --


@pytest.fixture
def no_proxy_env(monkeypatch):
  for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
    monkeypatch.delenv(var, raising=False)


@pytest.fixture
def listening_port():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(4)
  yield server.getsockname()[1]
  server.close()


def closed_port():
  probe_socket = socket.socket()
  probe_socket.bind(("127.0.0.1", 0))
  port = probe_socket.getsockname()[1]
  probe_socket.close()
  return port


def test_probe_open_and_closed_ports(no_proxy_env, listening_port):
  assert datasets.probe(f"http://127.0.0.1:{listening_port}/x", 2) is None
  assert datasets.host_reachable(f"http://127.0.0.1:{listening_port}/x", 2)
  port = closed_port()
  failure = datasets.probe(f"https://127.0.0.1:{port}/x", 2)
  assert failure is not None and failure.startswith(f"127.0.0.1:{port}: ")
  assert not datasets.host_reachable(f"https://127.0.0.1:{port}/x", 2)


def test_probe_returns_within_its_timeout_when_the_network_hangs(
    no_proxy_env, monkeypatch):
  release = threading.Event()

  def hang(address, timeout=None):  # e.g. a DNS lookup that never answers
    release.wait(30)
    raise OSError("released")

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  failure = datasets.probe("https://www.example.org/data.tar", 0.3)
  elapsed = time.monotonic() - start
  release.set()
  assert failure == "www.example.org:443 did not answer within 0.3 s"
  assert 0.25 < elapsed < 2.0


def test_probe_uses_the_proxy(no_proxy_env, monkeypatch, listening_port):
  monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{listening_port}")
  # The host itself does not resolve; the proxy answers.
  assert datasets.probe("https://nonexistent.invalid/x", 2) is None
  monkeypatch.setenv("no_proxy", "nonexistent.invalid")
  assert datasets.probe("https://nonexistent.invalid/x", 2) is not None


def test_probe_bad_arguments():
  with pytest.raises(ValueError, match="url"):
    datasets.probe("ftp://example.org/x")
  with pytest.raises(ValueError, match="url"):
    datasets.probe("not a url")
  with pytest.raises(ValueError, match="timeout_s"):
    datasets.probe("https://example.org/x", 0)


# ------------------------------------------------------- main.py offline --

# Runs a program with the tfds download hosts pointed at a closed local port:
# the real probe then fails at once, as it would offline. Anything else is
# untouched. argv[1] is the program ("main.py" or "cli"), the rest its flags.
WRAPPER = """
import dataclasses, runpy, sys
from sage_jax import datasets
port = int(sys.argv.pop(1))
for name, source in list(datasets.TFDS_SOURCES.items()):
  datasets.TFDS_SOURCES[name] = dataclasses.replace(
      source, url=f"https://127.0.0.1:{port}/{source.filename}")
if sys.argv[1] == "no-probe":  # a probe is then a failure of the test
  sys.argv.pop(1)
  def refuse(*args, **kwargs):
    sys.stderr.write("PROBED\\n")
    sys.exit(99)
  datasets.probe = refuse
program = sys.argv.pop(1)
if program == "cli":
  from sage_jax import cli
  cli.run(["sage-jax-train"] + sys.argv[1:])
else:
  sys.argv[0] = program
  runpy.run_path(program, run_name="__main__")
"""


def quick_start_commands() -> list:
  text = README.read_text()
  section = text[text.index("## Quick start"):]
  block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
  return [line.strip() for line in block.splitlines() if line.strip()]


def run_offline(args, tmp_path, cwd=ROOT, no_probe=False, timeout=60):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             TFDS_DATA_DIR=str(tmp_path / "tfds"), TF_CPP_MIN_LOG_LEVEL="2")
  command = [sys.executable, "-c", WRAPPER, str(closed_port())]
  command += (["no-probe"] if no_probe else []) + list(args)
  start = time.monotonic()
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
  return result, time.monotonic() - start


def test_readme_run_command_stops_within_30_s_offline(tmp_path):
  run_command = quick_start_commands()[1]
  assert run_command == "python main.py --config configs/smoke.py"
  result, seconds = run_offline(run_command.split()[1:], tmp_path)
  assert result.returncode == 1, result.stderr[-3000:]
  assert seconds < 30, seconds
  error = result.stderr[result.stderr.index("ERROR: "):]
  for part in ("tfds dataset 'cifar10' is not prepared",
               str(tmp_path / "tfds" / "cifar10" / "3.0.2"),
               "the download host is not reachable (127.0.0.1:",
               "tfds build cifar10 --data_dir DIR", "downloads/manual",
               "--config.dataset.name=image_folder"):
    assert part in error, (part, error)
  assert "Traceback" not in result.stderr
  # It said which backend and devices JAX uses before looking for data.
  assert re.search(r"JAX [\d.]+, backend cpu: \d+ device", result.stderr)
  assert not (tmp_path / "tfds").exists()


def test_download_false_config_stops_without_probing(tmp_path):
  config_file = tmp_path / "offline_config.py"
  config_file.write_text(
      "from sage_jax import config as config_lib\n\n\n"
      "def get_config():\n"
      "  config = config_lib.base_config()\n"
      "  config.dataset.download = False\n"
      "  return config\n")
  result, seconds = run_offline(["main.py", f"--config={config_file}"], tmp_path,
                                no_probe=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "PROBED" not in result.stderr
  assert "downloads are switched off (--config.dataset.download=False)" in result.stderr
  assert seconds < 30, seconds


@pytest.mark.skipif("download" not in config_lib.base_config().dataset,
                    reason="sage_jax.config has no dataset.download field")
def test_download_false_flag_stops_without_probing(tmp_path):
  result, _ = run_offline(["main.py", "--config=configs/smoke.py",
                           "--config.dataset.download=False"], tmp_path,
                          no_probe=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "PROBED" not in result.stderr
  assert "dataset.download=False" in result.stderr


# ---------------------------------------------------------------- subsets --


def write_folder(root, classes=("b_cat", "a_dog"), counts=(3, 2)):
  for split, count in zip(("train", "test"), counts):
    for label, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        (folder / f"{i:02d}.png").write_bytes(bytes([label, i]))
      (folder / "readme.txt").write_text("not an image")


def test_subset_image_folder_copies_the_first_files(tmp_path):
  write_folder(tmp_path / "src")
  counts = datasets.subset_image_folder(str(tmp_path / "src"), str(tmp_path / "out"),
                                        train_per_class=2, test_per_class=5)
  assert counts == {"train": 4, "test": 4}
  for split, expected in (("train", ["00.png", "01.png"]),
                          ("test", ["00.png", "01.png"])):
    for name in ("a_dog", "b_cat"):
      files = sorted(os.listdir(tmp_path / "out" / split / name))
      assert files == expected
      for f in files:
        assert ((tmp_path / "out" / split / name / f).read_bytes()
                == (tmp_path / "src" / split / name / f).read_bytes())
  with pytest.raises(ValueError, match="out_dir .* not an empty folder"):
    datasets.subset_image_folder(str(tmp_path / "src"), str(tmp_path / "out"),
                                 train_per_class=1, test_per_class=1)
  with pytest.raises(ValueError, match="train_per_class"):
    datasets.subset_image_folder(str(tmp_path / "src"), str(tmp_path / "new"),
                                 train_per_class=0, test_per_class=1)
  with pytest.raises(FileNotFoundError, match="train"):
    datasets.subset_image_folder(str(tmp_path / "none"), str(tmp_path / "new"),
                                 train_per_class=1, test_per_class=1)


def test_first_per_class_matches_a_loop():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 50)
  expected = []
  seen = {c: 0 for c in range(4)}
  for i, label in enumerate(labels):
    if seen[label] < 3:
      expected.append(i)
      seen[label] += 1
  np.testing.assert_array_equal(datasets.first_per_class(labels, 4, 3), expected)


def test_export_image_folder_round_trips_the_pixels(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(datasets, "probe", lambda url, timeout_s: None)
  out = tmp_path / "out"
  with tfds.testing.mock_data(num_examples=40):
    counts = datasets.export_image_folder("cifar10", str(out), train_per_class=2,
                                          test_per_class=1, data_dir=str(tmp_path))
    data = ip.load_dataset("cifar10", str(tmp_path))
  written = ip.load_dataset("image_folder", str(out))
  names = data.info.class_names
  assert written.info.class_names == tuple(sorted(names))
  for split, images, labels, count in (
      ("train", data.train_images, data.train_labels, 2),
      ("test", data.test_images, data.test_labels, 1)):
    indices = datasets.first_per_class(labels, len(names), count)
    assert counts[split] == len(indices)
    for i in indices:
      path = out / split / names[labels[i]] / f"{i:05d}.png"
      from PIL import Image  # pylint: disable=g-import-not-at-top
      np.testing.assert_array_equal(np.asarray(Image.open(path)), images[i])


def test_command_line(monkeypatch, tmp_path, capsys):
  write_folder(tmp_path / "src")
  assert datasets.main(["subset", "--source", str(tmp_path / "src"), "--out",
                        str(tmp_path / "out"), "--train_per_class", "1",
                        "--test_per_class", "1"]) == 0
  assert "wrote 2 train and 2 test images" in capsys.readouterr().out
  monkeypatch.setattr(datasets, "probe", lambda url, timeout_s: "offline")
  assert datasets.main(["prepare", "cifar10", "--data_dir",
                        str(tmp_path / "tfds")]) == 1
  assert "tfds build cifar10" in capsys.readouterr().err
