"""The package as an operator gets it: `--version`, the prompts installed for Asterisk, and
the built wheel in a new virtual environment outside the checkout running the demo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from flows.errors import ConfigError
from prompts.catalog import FORMATS, load_catalog, package_dir
from prompts.install import INSTALLED_MANIFEST, install

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_version_prints_the_installed_distributions_version(tmp_path: Path) -> None:
    """`callrec --version` prints the version the package was installed as."""
    result = _run(sys.executable, "-m", "callrec.cli", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"callrec {metadata.version('callrec')}"


def test_prompts_install_writes_what_asterisk_plays(tmp_path: Path) -> None:
    """`callrec prompts install DIR` puts every format of every prompt in DIR/sl/, byte for
    byte the package's, readable by Asterisk's user, with texts and manifest; a second run
    writes nothing."""
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    result = _run(sys.executable, "-m", "callrec.cli", "prompts", "install", sounds, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    catalog = load_catalog()
    for prompt_id, info in catalog.items():
        for fmt in FORMATS:
            installed = sounds / "sl" / f"{prompt_id}.{fmt}"
            assert installed.read_bytes() == (package_dir() / "sl" / installed.name).read_bytes()
            assert stat.S_IMODE(installed.stat().st_mode) == 0o644
        wav = (sounds / "sl" / f"{prompt_id}.wav").read_bytes()
        assert hashlib.sha256(wav).hexdigest() == info.sha256  # the version decisions store
        assert (sounds / "sl" / f"{prompt_id}.txt").read_text(encoding="utf-8") == (
            package_dir() / "texts" / f"{prompt_id}.txt"
        ).read_text(encoding="utf-8")
    assert json.loads((sounds / "sl" / INSTALLED_MANIFEST).read_text(encoding="utf-8"))
    again = _run(
        sys.executable, "-m", "callrec.cli", "prompts", "install", sounds, "--json", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert not any(f["changed"] for f in json.loads(again.stdout)["files"])


def test_prompts_install_refuses_a_missing_dir_and_a_damaged_source(tmp_path: Path) -> None:
    """A sounds directory that does not exist is exit 2 naming it; a packaged file that does
    not match its manifest is refused and leaves no copy of it behind."""
    missing = tmp_path / "no-such-sounds"
    result = _run(sys.executable, "-m", "callrec.cli", "prompts", "install", missing, cwd=tmp_path)
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists()
    source = tmp_path / "prompts"
    shutil.copytree(package_dir(), source, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    damaged = source / "sl" / "callrec-sales-notice.ulaw"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    with pytest.raises(ConfigError, match=r"callrec-sales-notice\.ulaw"):
        install(sounds, source)
    assert not (sounds / "sl" / "callrec-sales-notice.ulaw").exists()


def test_prompts_path_names_the_packaged_audio(tmp_path: Path) -> None:
    """`callrec prompts path` prints the directory whose sl/ holds every prompt's audio."""
    result = _run(sys.executable, "-m", "callrec.cli", "prompts", "path", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip())
    for prompt_id in load_catalog():
        assert (printed / "sl" / f"{prompt_id}.wav").is_file()


def _source_tree(dest: Path) -> Path:
    """A copy of what the build reads (pyproject's packages and mapped directories), so
    the build leaves nothing in the checkout."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapped = config.get("package-dir", {})
    tops = {mapped.get(p, p.replace(".", "/")).split("/")[0] for p in config["packages"]}
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for top in sorted(tops):
        shutil.copytree(
            ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return src


def _setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except metadata.PackageNotFoundError:
        return (0,)


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_a_new_virtualenv(tmp_path: Path) -> None:
    """The built wheel, installed in a new virtual environment outside the checkout, runs
    `callrec demo` in another directory with every scenario passing, on its own scenarios,
    dialplan and prompts."""
    if _setuptools_version() < (77,):
        pytest.skip("setuptools>=77 (the test extra) builds the wheel without a download")
    wheelhouse = tmp_path / "wheelhouse"
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "--wheel-dir", wheelhouse, _source_tree(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheelhouse.glob("callrec-*.whl")

    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel, cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # No network here: the dependencies come from this environment's site-packages, as
    # plain directories at the end of sys.path (their .pth files, this checkout's editable
    # install among them, are not run), so callrec itself can only come from the wheel.
    purelib = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=tmp_path,
        ).stdout.strip()
    )  # fmt: skip
    (purelib / "zz-test-dependencies.pth").write_text(
        "".join(f"{p}\n" for p in site.getsitepackages()), encoding="utf-8"
    )
    where = _run(
        python, "-c",
        "import callrec, agi.simpbx, prompts; from importlib import metadata\n"
        "print(callrec.__file__); print(agi.simpbx.__file__); print(prompts.__file__)\n"
        "from packaging.requirements import Requirement\n"
        "for r in metadata.requires('callrec') or []:\n"
        "    req = Requirement(r)\n"
        "    if req.marker is None: assert metadata.version(req.name), req.name\n",
        cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for module in where.stdout.split():
        assert Path(module).is_relative_to(purelib), module

    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    callrec = venv / "bin" / "callrec"
    version = _run(callrec, "--version", cwd=elsewhere)
    assert version.stdout.strip() == f"callrec {wheel.name.split('-')[1]}", version.stderr
    prompts_path = _run(callrec, "prompts", "path", cwd=elsewhere)
    assert Path(prompts_path.stdout.strip()).is_relative_to(purelib), prompts_path.stderr
    demo = _run(
        callrec, "demo", "--json", "--data-dir", elsewhere / "store", cwd=elsewhere, timeout=600
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    scenarios = json.loads(demo.stdout)["scenarios"]
    shipped = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))
    assert len(scenarios) == len(shipped) > 0
    assert all(s["passed"] for s in scenarios), [
        s["scenario"] for s in scenarios if not s["passed"]
    ]
