"""A wheel that works: built from the tree, installed into a fresh venv outside the repository, and run
from there, with the toy model and toy CLIP as package data (slow: builds and installs a 12 MB wheel).
Installed without extras it needs neither peft (the `baselines` extra) nor moto (a test server, `dev`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Extras a plain `pip install cones` leaves out: the venv below is made unable to import them.
NOT_INSTALLED = ("peft", "moto")
# Loaded by the test venv's site-packages at start-up: the packages above, though present in the venv its
# dependencies come from, look absent: `import` raises ModuleNotFoundError and importlib.util.find_spec returns
# None (a None in sys.modules), which is how libraries probe for optional packages (diffusers' is_peft_available).
_BLOCKER = f"""
import sys

for name in {NOT_INSTALLED!r}:
    sys.modules[name] = None
"""


def _sources(dest: Path) -> Path:
    """The files git would see (tracked, or new and not ignored), copied: a build never reads a stale build/."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_installs_outside_the_repo_and_runs_the_toy_commands(tmp_path):
    src = _sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    # --no-build-isolation: the build backend (setuptools) from this venv, no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("cones-*.whl")
    shipped = [n for n in zipfile.ZipFile(wheel).namelist() if "/shipped/" in n]
    assert any(n.endswith("toy-model/unet/diffusion_pytorch_model.safetensors") for n in shipped), shipped
    assert any(n.endswith("toy-clip/open_clip_model.safetensors") for n in shipped), shipped

    # A fresh venv whose dependencies (torch, diffusers, prefect, ...) come from this venv's site-packages via a
    # .pth line: nothing is downloaded, and this venv's editable `cones` stays invisible (a .pth line adds a
    # path; it does not run that path's own .pth files, where the editable finder lives).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "repo-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "sitecustomize.py").write_text(_BLOCKER)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], check=True,
                   capture_output=True, timeout=300)

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"

    def cones(*args: str) -> str:
        done = subprocess.run([venv / "bin" / "cones", *args], cwd=run_dir, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"cones {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = subprocess.run([py, "-c", "import cones_cli, cones_tasks; print(cones_cli.__file__, cones_tasks.__file__)"],
                           cwd=run_dir, env=env, capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in where and str(site) in where, where  # the installed copy, not the checkout
    for name in NOT_INSTALLED:  # the extras really are out of reach here
        missing = subprocess.run([py, "-c", f"import {name}"], cwd=run_dir, env=env, capture_output=True, text=True)
        assert missing.returncode == 1 and "ModuleNotFoundError" in missing.stderr, missing.stderr
    metadata = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA")))
    requires = [line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")]
    assert all("extra ==" in line for line in requires if any(name in line for name in NOT_INSTALLED)), requires

    assert "Run `customize` end to end" in re.sub(r"\s+", " ", cones("demo", "--help"))
    for group in ("run", "toy", "bench", "config"):  # every command group loads without the extras
        assert "Usage" in cones(group, "--help")
    judge = json.loads(cones("toy", "eval-judge", "--json"))
    assert judge["single"]["shape"] >= 0.99 and judge["pair"]["shape"] >= 0.97
    model_dir = Path(cones("toy", "assets", "toy-model").strip())
    assert model_dir.is_relative_to(site) and (model_dir / "unet").is_dir()
    # The shipped toy model loads and samples from the installed wheel: 4 images per line, 4 steps.
    sampled = json.loads(cones("toy", "eval-model", "--n", "4", "--steps", "4", "--json"))
    assert sampled["single"]["n"] == 4 and 0.0 <= sampled["single"]["shape"] <= 1.0


def test_peft_and_moto_are_extras_and_make_test_installs_them():
    """The fast twin of the wheel test's check: a plain install lists neither; `make test` still gets both."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(peft|moto)\b", d)]
    extras = project["optional-dependencies"]
    assert any(d.startswith("peft") for d in extras["baselines"]) and not any("moto" in d for d in extras["s3"])
    assert any(d.startswith("moto") for d in extras["dev"]) and "cones[baselines]" in extras["dev"]
    assert re.search(r"pip install -q -e '\.\[dev,[^']*\]'", (REPO / "Makefile").read_text())


def test_makefile_installs_the_torch_that_pyproject_names_as_tested():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    upper = {m.group(1): m.group(2) for d in deps if (m := re.fullmatch(r"(torch|torchvision)>=[\d.]+,<=([\d.]+)", d))}
    makefile = (REPO / "Makefile").read_text()
    installed = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", makefile))
    assert set(upper) == {"torch", "torchvision"} and installed == upper, (upper, installed)
