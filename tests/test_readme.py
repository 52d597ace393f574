"""The README and docs/: every ```python block of the README runs as written,
nothing points outside the repository, every relative link resolves, the
quick start is what CI and the tests run, and docs/method.md records the
WRN16-8 conflict as the config resolves it."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples():
  assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
  exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


# --- What a user of a clean clone reads ----------------------------------------

ROOT = README.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
# What users run or read: nothing there may point outside the repository.
USER_FILES = [README, *DOCS, *sorted((ROOT / "configs").glob("*.py")),
              *sorted((ROOT / "benchmarks").glob("*.py")),
              *sorted((ROOT / "sage_jax").rglob("*.py")), ROOT / "main.py",
              ROOT / "pyproject.toml"]
OUTSIDE = re.compile(r"\.\./|/work/|/check/|\bshared/data\b|cifar10-jpeg\.tar")


@pytest.mark.parametrize("path", USER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_outside_the_repository(path):
  hits = [f"{n}: {line.strip()}" for n, line in
          enumerate(path.read_text().splitlines(), 1) if OUTSIDE.search(line)]
  assert not hits, hits


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  return {github_anchor(line.lstrip("#")) for line in path.read_text().splitlines()
          if line.startswith("#")}


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path):
  text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
  links = re.findall(r"\]\(([^)\s]+)\)", text)
  assert links or path != README
  for link in links:
    if re.match(r"^[a-z]+://", link):
      continue
    target, _, anchor = link.partition("#")
    file = (path.parent / target).resolve() if target else path
    assert file.exists(), link
    assert ROOT in file.parents or file == ROOT, link
    if anchor:
      assert anchor in anchors(file), (link, sorted(anchors(file)))


def test_anchor_rule():
  assert github_anchor("The open conflict: WRN16-8 on CIFAR-100") == (
      "the-open-conflict-wrn16-8-on-cifar-100")
  assert github_anchor("Library use: `sage_jax.augment`") == "library-use-sage_jaxaugment"


def quick_start() -> list:
  text = README.read_text()
  section = text[text.index("## Quick start"):]
  block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
  return [line.strip() for line in block.splitlines() if line.strip()]


def ci_commands() -> list:
  """The commands of .ci/run, without the flags that only quieten pip."""
  lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
           if line.strip() and not line.startswith(("#", "set ", "cd "))]
  quiet = ("--quiet", "--disable-pip-version-check")
  return [" ".join(w for w in line.replace("python -m pip", "pip").split()
                   if w not in quiet) for line in lines]


def test_quick_start_is_what_ci_and_the_tests_run():
  install, run, test = quick_start()
  ci = ci_commands()
  assert install.split(" && ") == ci[:-1], (install, ci)
  assert test == ci[-1] == "python -m pytest -q"
  # tests/test_download.py runs this one, offline, as written.
  assert run == "python main.py --config configs/smoke.py"
  assert (ROOT / "configs" / "smoke.py").exists()
  text = README.read_text()
  assert text.index("## Quick start") < text.index("## Install")
  assert "](docs/method.md)" in text


def test_method_doc_records_the_wrn_conflict_and_the_config_used():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from sage_jax import cli  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cifar100_config",
                                                ROOT / "configs" / "cifar100.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  used = module.SAGE_SETTINGS["wrn16_8"]
  config = module.get_config("wrn16_8")
  assert (config.sage.upper_lambda, config.sage.mix_grad_weight) == used == (0.7, 0.5)
  text = (ROOT / "docs" / "method.md").read_text()
  section = text[text.index("### The open conflict"):]
  assert "(0.6, 0.7)" in section and "(0.7, 0.5)" in section
  assert "`configs/cifar100.py:wrn16_8` uses the released code's\n(0.7, 0.5)" in section
  command = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
  overrides = re.findall(r"--config\.([\w.]+)=([\d.]+)", command)
  assert dict(overrides) == {"sage.upper_lambda": "0.6", "sage.mix_grad_weight": "0.7"}
  assert cli.unknown_field_message(config, [k for k, _ in overrides]) is None
  assert "configs/cifar100.py:wrn16_8" in command
