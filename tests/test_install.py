"""Packaging: the core installs and runs alone; the `train` extra is complete.

The clean-environment test does not download anything, so it runs offline and
in seconds (jax and its dependencies are hundreds of MB): it builds the wheel
of a copy of the sources with the setuptools already installed, makes a venv
*without* system site-packages, links into it only the installed
distributions that the wheel's core requirements need (their closure under
Requires-Dist, read from the installed metadata), installs the wheel there
with `--no-deps --no-index`, lets `pip check` confirm that nothing the
core needs is missing, and runs the README's first library example with that
venv's interpreter. Anything else the core imported (flax, tensorflow, ...)
would be absent there and fail the run.
"""
import ast
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import tomllib
import venv
import zipfile

from packaging.requirements import Requirement
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Distributions a user of the core does not want pulled in.
HEAVY_MODULES = ("flax", "optax", "tensorflow", "tensorflow_datasets", "orbax",
                 "matplotlib", "ml_collections", "absl", "tqdm", "PIL", "cv2")
# Imported by the program only on request, with its own install instruction.
OPTIONAL_MODULES = {
    "cv2": "--config.saliencymix.saliency=released_float_image only; the README "
           "says to pip install opencv-contrib-python-headless",
}


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def library_example() -> str:
  """The first ```python block of the README's library section."""
  text = README.read_text()
  section = text[text.index("## Library use: `sage_jax.augment`"):]
  return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def clean_env() -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_core_imports_no_training_dependency():
  code = ("import json, sys; import sage_jax, sage_jax.augment; "
          "print(json.dumps(sorted(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       capture_output=True, text=True, env=clean_env()).stdout
  loaded = {name.split(".")[0] for name in json.loads(out)}
  assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))


def test_core_requirements_are_jax_and_numpy():
  names = {canonical(Requirement(r).name) for r in project()["dependencies"]}
  assert names == {"jax", "numpy"}


def requirement_closure(requirements) -> list:
  """Installed distributions needed by `requirements`, transitively.

  Markers are evaluated for this interpreter with no extra selected, so
  optional dependencies (jax[cuda], ...) are left out.
  """
  seen, todo = {}, list(requirements)
  while todo:
    req = Requirement(todo.pop())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
      continue
    name = canonical(req.name)
    if name in seen:
      continue
    dist = importlib.metadata.distribution(req.name)
    assert req.specifier.contains(dist.version, prereleases=True), (req, dist.version)
    seen[name] = dist
    todo.extend(dist.requires or [])
  return list(seen.values())


def link_distribution(dist, site_packages: pathlib.Path) -> None:
  """Symlinks the top-level files and folders of `dist` into `site_packages`."""
  tops = {pathlib.PurePath(f).parts[0] for f in dist.files or []}
  for top in sorted(tops - {"..", "__pycache__"}):
    target = site_packages / top
    if not target.exists():
      target.symlink_to(pathlib.Path(dist.locate_file(top)).resolve())


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The package's wheel, built offline from a copy of the sources (so that
  the build leaves nothing in the work tree)."""
  tmp_path = tmp_path_factory.mktemp("build")
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / "sage_jax", src / "sage_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  wheels = tmp_path / "wheels"
  subprocess.run(PIP + ["wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(wheels), str(src)],
                 check=True, capture_output=True, env=clean_env())
  (built,) = wheels.glob("sage_jax-*.whl")
  return built


def wheel_metadata(wheel_path, suffix: str) -> str:
  with zipfile.ZipFile(wheel_path) as archive:
    return next(archive.read(n).decode() for n in archive.namelist()
                if n.endswith(".dist-info/" + suffix))


def test_core_installs_alone_and_runs_the_readme_example(wheel, tmp_path):
  pip = PIP

  # The built metadata: core = jax + numpy; the rest only under `train`.
  metadata = wheel_metadata(wheel, "METADATA")
  requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Requires-Dist:")]
  core = [r for r in requires if "extra ==" not in r]
  assert {canonical(Requirement(r).name) for r in core} == {"jax", "numpy"}
  assert any(canonical(Requirement(r).name) == "flax" for r in requires)

  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
  python = env_dir / "bin" / "python"
  site_packages = pathlib.Path(subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
      check=True, capture_output=True, text=True).stdout.strip())
  for dist in requirement_closure(core):
    link_distribution(dist, site_packages)
  subprocess.run(pip + ["--python", str(python), "install", "--no-deps",
                        "--no-index", "-q", str(wheel)],
                 check=True, capture_output=True, env=clean_env())
  check = subprocess.run(pip + ["--python", str(python), "check"],
                         capture_output=True, text=True, env=clean_env())
  assert check.returncode == 0, check.stdout + check.stderr

  script = tmp_path / "example.py"
  script.write_text(library_example() + """
import importlib.util, sage_jax
assert sage_jax.__file__.startswith(%r), sage_jax.__file__
missing = [m for m in %r if importlib.util.find_spec(m) is not None]
assert not missing, missing
try:
  augment.nnx_sage_value_and_grad(lambda m, x, t: 0.0)
except ModuleNotFoundError as e:
  assert e.name == "flax", e
else:
  raise AssertionError("the NNX helper needs flax")
print("core ok")
""" % (str(site_packages), HEAVY_MODULES))
  run = subprocess.run([python, "-I", str(script)], cwd=tmp_path,
                       capture_output=True, text=True, env=clean_env())
  assert run.returncode == 0 and "core ok" in run.stdout, run.stderr[-3000:]


def third_party_imports(paths) -> dict:
  """{top-level module: [files importing it]} over `paths`, any nesting."""
  found = {}
  for path in paths:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top != "sage_jax":
          found.setdefault(top, []).append(str(path.relative_to(ROOT)))
  return found


def test_train_extra_lists_every_import_of_the_program():
  # The program: main.py, the config files it loads, and every module of the
  # package (compare, evaluate, visualize, ... are programs too).
  paths = [ROOT / "main.py", *sorted((ROOT / "configs").glob("*.py")),
           *sorted((ROOT / "sage_jax").rglob("*.py"))]
  listed = {canonical(Requirement(r).name)
            for r in project()["dependencies"]
            + project()["optional-dependencies"]["train"]}
  distributions = importlib.metadata.packages_distributions()
  unlisted = {}
  for module, files in third_party_imports(paths).items():
    if module in OPTIONAL_MODULES:
      continue
    dists = {canonical(d) for d in distributions.get(module, [])}
    assert dists, f"{module} (imported by {files}) is not installed"
    if not dists & listed:
      unlisted[module] = (sorted(dists), files)
  assert not unlisted, f"imported but not in the core or [train]: {unlisted}"


def test_tensorflow_is_in_the_train_extra_for_every_platform():
  # TensorBoard logging imports tensorflow; the extra names the CPU build on
  # Linux x86-64 and tensorflow elsewhere, so exactly one applies anywhere.
  train = [Requirement(r) for r in project()["optional-dependencies"]["train"]]
  tf = [r for r in train if canonical(r.name) in ("tensorflow", "tensorflow-cpu")]
  for platform in (("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"),
                   ("win32", "AMD64")):
    env = {"sys_platform": platform[0], "platform_machine": platform[1],
           "extra": "train"}
    assert sum(r.marker.evaluate(env) for r in tf) == 1, platform


def test_requirements_pins_satisfy_pyproject():
  pins = {}
  for line in (ROOT / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      req = Requirement(line)
      pins[canonical(req.name)] = next(iter(req.specifier)).version
  for text in project()["dependencies"] + project()["optional-dependencies"]["train"]:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": "train"}):
      continue
    name = canonical(req.name)
    assert name in pins, f"{name} is not pinned in requirements.txt"
    assert req.specifier.contains(pins[name]), (text, pins[name])


def package_version() -> str:
  """`__version__` of sage_jax/__init__.py, read without importing."""
  tree = ast.parse((ROOT / "sage_jax" / "__init__.py").read_text())
  (value,) = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
              and [t.id for t in node.targets] == ["__version__"]]
  return value


def test_version_is_written_once():
  pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert "version" not in pyproject["project"]
  assert "version" in pyproject["project"]["dynamic"]
  assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
      "attr": "sage_jax.__version__"}
  import sage_jax  # pylint: disable=g-import-not-at-top
  assert sage_jax.__version__ == package_version()
  assert re.fullmatch(r"\d+\.\d+\.\d+", package_version())


def test_wheel_has_the_version_and_the_console_script(wheel):
  assert f"Version: {package_version()}" in wheel_metadata(wheel, "METADATA").splitlines()
  assert wheel.name.startswith(f"sage_jax-{package_version()}-")
  scripts = wheel_metadata(wheel, "entry_points.txt")
  assert "sage-jax-train = sage_jax.cli:run" in scripts


def requirements_pins() -> dict:
  pins = {}
  for line in (ROOT / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      req = Requirement(line)
      pins[canonical(req.name)] = next(iter(req.specifier)).version
  return pins


@pytest.mark.parametrize("extra,jax_extra", [("cuda12", "cuda12"),
                                             ("cuda13", "cuda13"), ("tpu", "tpu")])
def test_accelerator_extras_pin_the_jax_of_requirements(extra, jax_extra):
  (requirement,) = [Requirement(r) for r in project()["optional-dependencies"][extra]]
  assert canonical(requirement.name) == "jax"
  assert requirement.extras == {jax_extra}
  assert str(requirement.specifier) == f"=={requirements_pins()['jax']}"
  # jax's own metadata has that extra (so pip resolves its plugin).
  jax_requires = importlib.metadata.distribution("jax").requires or []
  assert any(f'extra == "{jax_extra}"' in r for r in jax_requires), jax_extra


def test_readme_install_commands_name_existing_extras():
  extras = set(project()["optional-dependencies"])
  named = re.findall(r'pip install (?:-e )?"\.\[([a-z0-9,]+)\]"', README.read_text())
  assert named, "the README shows no pip install \".[...]\" command"
  for group in named:
    assert set(group.split(",")) <= extras, group
  assert {"train", "train,cuda12", "train,cuda13", "train,tpu"} <= set(named)


def test_installed_console_script_runs_from_another_directory(wheel, tmp_path):
  # A fresh environment that sees the installed training dependencies but
  # gets sage_jax only from the wheel (as `pip install ".[train]"` from a
  # clean clone would), then the console script, run from elsewhere.
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False, system_site_packages=True).create(env_dir)
  python = env_dir / "bin" / "python"
  subprocess.run(PIP + ["--python", str(python), "install", "--no-deps",
                        "--no-index", "-q", str(wheel)],
                 check=True, capture_output=True, env=clean_env())
  script = env_dir / "bin" / "sage-jax-train"
  assert script.exists()
  work = tmp_path / "elsewhere"
  work.mkdir()
  env = dict(clean_env(), TFDS_DATA_DIR=str(tmp_path / "tfds"),
             TF_CPP_MIN_LOG_LEVEL="2")
  where = subprocess.run([python, "-c", "import sage_jax; print(sage_jax.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True, check=True)
  assert where.stdout.startswith(str(env_dir)), where.stdout

  help_run = subprocess.run([script, "--help"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=120)
  assert "  --config:" in help_run.stdout and "  --workdir:" in help_run.stdout

  # Offline: a config that forbids downloads stops within seconds with the
  # instructions, and writes nothing where it was run.
  config_file = tmp_path / "offline.py"
  config_file.write_text(
      "from sage_jax import config as config_lib\n\n\n"
      "def get_config():\n"
      "  config = config_lib.base_config()\n"
      "  config.dataset.download = False\n"
      "  return config\n")
  start = time.monotonic()
  run = subprocess.run([script, f"--config={config_file}"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1, run.stderr[-3000:]
  assert time.monotonic() - start < 30
  assert "tfds dataset 'cifar10' is not prepared" in run.stderr
  assert "--config.dataset.download=False" in run.stderr
  assert os.listdir(work) == []


if not hasattr(os, "symlink"):  # pragma: no cover
  pytestmark = pytest.mark.skip("needs symlinks")
