"""The package installs anywhere: its wheel, installed by pip into a fresh virtual environment, runs the quickstart
notebook from a folder outside the repository, with everything it reads inside the installed package (the sandbox
checkpoint, the accelerate configs, the data/ files the notebooks read).

Offline, torch and the rest cannot be installed into a fresh environment: its dependencies are this environment's
site-packages, reached through a .pth file, and the wheel goes in with `pip install --no-deps --no-index`. The test
checks that `rlhf_widgets` then comes from the new environment's site-packages, not from the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_notebooks import NOTEBOOKS, outputs, run_notebook

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "rlhf_widgets", "data")
"""what the wheel is built from"""


def build_wheel(out: Path) -> Path:
    """The project's wheel, built offline (this environment's setuptools, no build isolation) from a copy of the
    working tree, so that building leaves nothing behind in the repository."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "--wheel-dir", str(out), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return next(out.glob("rlhf_widgets-*.whl"))


def expected_in_wheel() -> set[str]:
    """Every module, the committed sandbox checkpoint, the accelerate configs, and every file under data/."""
    package = REPO / "rlhf_widgets"
    files = [*package.rglob("*.py"), *(package / "sandbox" / "assets").rglob("*"),
             *(package / "accelerate_configs").glob("*.yaml")]
    names = {f"rlhf_widgets/{p.relative_to(package).as_posix()}" for p in files
             if p.is_file() and "__pycache__" not in p.parts}
    data = REPO / "data"
    return names | {f"rlhf_widgets/data_files/{p.relative_to(data).as_posix()}" for p in data.rglob("*") if p.is_file()}


def install_in_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A new virtual environment with `wheel` installed by pip and this environment's packages as its dependencies;
    returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    # plain directories (their own .pth files, such as this project's editable install, are not processed)
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    return site


@pytest.mark.slow
def test_wheel_installs_and_runs_the_quickstart_notebook_outside_the_repo(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = build_wheel(tmp_path / "dist")
    missing = expected_in_wheel() - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"not in the wheel (pyproject.toml: packages, package-data): {sorted(missing)}"

    venv = tmp_path / "venv"
    site = install_in_fresh_venv(wheel, venv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("PYTHONPATH", raising=False)  # nothing may lead back to the repository
    monkeypatch.chdir(elsewhere)
    console = subprocess.run([str(venv / "bin" / "rlhf-widgets"), "--help"], capture_output=True, text=True)
    assert console.returncode == 0 and "quickstart" in console.stdout, console.stderr  # the console script

    # the quickstart notebook, copied out, in a kernel of the new environment
    kernel = venv / "share" / "jupyter" / "kernels" / "installed"
    kernel.mkdir(parents=True)
    argv = [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "installed", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(venv / "share" / "jupyter"))
    copy = Path(shutil.copy(NOTEBOOKS / "00_quickstart.ipynb", elsewhere))
    overrides = "\n".join([
        'RUN_DIR = "qs"',
        "SFT_DEMOS, PAIR_PROMPTS, PPO_UPDATES, EVAL_PROMPTS = 16, 8, 1, 4",
        "import json, sys, rlhf_widgets",
        "from rlhf_widgets import data_file",
        'print(json.dumps({"python": sys.executable, "package": rlhf_widgets.__file__,',
        '                  "data": str(data_file("preferences/conversational.jsonl"))}))',
    ])
    book = run_notebook(copy, overrides, elsewhere, kernel_name="installed")
    where = next(json.loads(o["text"]) for o in outputs(book) if o.get("text", "").startswith('{"python"'))
    assert where["python"] == str(venv / "bin" / "python")
    assert Path(where["package"]).is_relative_to(site), where
    assert Path(where["data"]).is_relative_to(site) and Path(where["data"]).is_file(), where
    report = json.loads((elsewhere / "qs" / "report.json").read_text())
    assert set(report["numbers"]["comparison"]) == {"SFT", "best-of-8", "PPO", "DPO"}
