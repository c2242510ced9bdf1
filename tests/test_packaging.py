"""Packaging and the command-line surface: the wheel carries conf/ as dlx/conf and an installed dlx
composes from it outside the source tree; `dlx --help` answers without importing torch or mlflow;
`dlx train --help` and `dlx train --cfg job` show the config groups and the composed defaults."""

from __future__ import annotations

import functools
import os
import re
import site
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, dlx_env, run_dlx

COMMANDS = ("train", "runs", "ui")
# the groups of a run; conf/study (dlx study) and conf/hydra (launchers) belong to sweeps
GROUPS = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in ("study", "hydra"))
HEAVY = ("torch", "mlflow")


def project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def clean_env() -> dict[str, str]:
    """dlx_env without anything that could put the source checkout on sys.path."""
    env = dlx_env()
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"):
        env.pop(key, None)
    return env


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level package names from the `-X importtime` report on stderr."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "package":
                names.add(name)
    return names


def is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- the wheel

@dataclass(frozen=True)
class Installed:
    """dlx built as a wheel and installed, not editable, into a fresh venv outside the checkout."""

    wheel: Path
    venv: Path
    python: Path
    dlx: Path  # the venv's console script
    env: dict


@functools.cache  # keyed by the session's temporary folder: the suite builds and installs the wheel once
def installed_dlx(basetemp: Path) -> Installed:
    pytest.importorskip("hatchling")
    pytest.importorskip("pip")
    env = clean_env()
    root = basetemp / "dlx-wheel"
    root.mkdir()
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", str(REPO), "-w", str(dist)],
        capture_output=True, text=True, timeout=180, env=env)
    assert build.returncode == 0, f"building the wheel failed\n{build.stdout}\n{build.stderr}"
    wheels = sorted(dist.glob("dlx-*.whl"))
    assert len(wheels) == 1, f"expected one dlx wheel, found {[w.name for w in dist.iterdir()]}"

    # a fresh environment holding only the wheel's dlx; the dependencies come from this interpreter's
    # site-packages through a plain path line, which does not run that directory's own .pth files
    # (an editable install of the checkout stays off sys.path)
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert made.returncode == 0, made.stderr
    vpython, vdlx = venv / "bin" / "python", venv / "bin" / "dlx"
    install = subprocess.run(
        [str(vpython), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir",
         "--disable-pip-version-check", str(wheels[0])],
        capture_output=True, text=True, timeout=180, env=env)
    assert install.returncode == 0, f"installing the wheel failed\n{install.stdout}\n{install.stderr}"
    purelib = subprocess.run([str(vpython), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, timeout=60, env=env, check=True).stdout.strip()
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    lines = list(dict.fromkeys(d for d in deps if Path(d).is_dir() and Path(d) != Path(purelib)))
    (Path(purelib) / "zz_dlx_test_dependencies.pth").write_text("\n".join(lines) + "\n")
    return Installed(wheels[0], venv, vpython, vdlx, env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    return installed_dlx(tmp_path_factory.getbasetemp())


def imported_from(installed: Installed, module: str, cwd: Path) -> Path:
    """Where the venv's interpreter, started in cwd, imports a module from."""
    proc = subprocess.run([str(installed.python), "-c", f"import {module}; print({module}.__file__)"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=installed.env)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def test_wheel_ships_the_configs_and_the_console_script(installed):
    assert installed.wheel.name.startswith(f"dlx-{project_version()}-")
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
        entry_points = next((zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    assert "dlx/conf/config.yaml" in names
    assert "dlx/cli.py" in names and "dlx/compose.py" in names
    shipped = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    assert len(shipped) > len(GROUPS), "conf/ holds fewer YAML files than expected"
    missing = [f"dlx/conf/{rel}" for rel in shipped if f"dlx/conf/{rel}" not in names]
    assert not missing, f"the wheel lacks configs: {missing}"
    for group in GROUPS:
        assert any(n.startswith(f"dlx/conf/{group}/") and n.endswith(".yaml") for n in names), group
    assert not any(n.startswith("conf/") for n in names), "conf/ must ship inside the package, as dlx/conf"
    assert re.search(r"^dlx\s*=\s*dlx\.cli:entry\s*$", entry_points, re.MULTILINE), entry_points
    assert installed.dlx.is_file(), "the wheel installs no `dlx` console script"


def test_an_installed_dlx_composes_from_its_own_configs(installed, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not is_inside(outside, REPO)
    env = installed.env

    where = subprocess.run(
        [str(installed.python), "-c",
         "import dlx, dlx.compose; print(dlx.__file__); print(dlx.compose.config_dir())"],
        cwd=outside, capture_output=True, text=True, timeout=120, env=env)
    assert where.returncode == 0, where.stderr
    package_file, conf_dir = (Path(line) for line in where.stdout.strip().splitlines())
    assert is_inside(package_file, installed.venv) and not is_inside(package_file, REPO), package_file
    assert is_inside(conf_dir, installed.venv) and not is_inside(conf_dir, REPO), conf_dir
    assert conf_dir.name == "conf" and conf_dir.parent.name == "dlx", conf_dir
    assert (conf_dir / "config.yaml").is_file()

    job = subprocess.run([str(installed.dlx), "train", "--cfg", "job"], cwd=outside, capture_output=True,
                         text=True, timeout=180, env=env)
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}"
    assert re.search(r"^model:$", job.stdout, re.MULTILINE), job.stdout
    assert re.search(r"^optimizer:$", job.stdout, re.MULTILINE), job.stdout
    cfg = yaml.safe_load(job.stdout)
    assert cfg["dataset"]["_target_"] == "dlx.data.digits" and cfg["model"]["_target_"] == "dlx.models.MLP", cfg
    assert not (outside / "outputs").exists(), "printing the config must not create a run directory"

    version = subprocess.run([str(installed.dlx), "--version"], cwd=outside, capture_output=True, text=True,
                             timeout=60, env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"dlx {project_version()}", version


# ---------------------------------------------------------------- dlx --help, unknown commands, --version

@pytest.mark.parametrize("entry", ["module", "script"])
def test_help_lists_the_commands_without_importing_torch_or_mlflow(entry, tmp_path):
    if entry == "module":
        argv = [sys.executable, "-X", "importtime", "-m", "dlx", "--help"]
    else:
        script = Path(sys.executable).parent / "dlx"
        if not script.is_file():
            pytest.skip("no `dlx` console script next to this interpreter")
        argv = [sys.executable, "-X", "importtime", str(script), "--help"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: dlx"), proc.stdout
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.MULTILINE), f"{command} not in\n{proc.stdout}"
    modules = imported_modules(proc.stderr)
    assert "dlx.cli" in modules, "the -X importtime report was not understood"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`dlx --help` imported {heavy[:10]}"


def test_help_into_a_closed_pipe_stops_quietly(tmp_path):
    """`dlx --help | head -1`: the reader leaves early; no traceback, the exit status of a SIGPIPE."""
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "dlx", "--help"], cwd=tmp_path, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60, env=clean_env())
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_help_leaves_torch_and_mlflow_unimported_in_process(tmp_path):
    code = (
        "import runpy, sys\n"
        "sys.argv = ['dlx', '--help']\n"
        "try:\n"
        "    runpy.run_module('dlx', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    raise AssertionError('dlx --help did not exit')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow'))\n"
        "assert 'dlx.cli' in sys.modules\n"
        "assert not heavy, heavy[:10]\n"
        "raise SystemExit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "train" in proc.stdout and "runs" in proc.stdout and "ui" in proc.stdout


def test_unknown_command_exits_2_and_names_the_valid_ones(tmp_path):
    proc = run_dlx(["trian"], tmp_path, timeout=60)
    assert proc.returncode == 2
    first = proc.stderr.strip().splitlines()[0]
    assert "unknown command 'trian'" in first, proc.stderr
    for command in COMMANDS:
        assert command in first, first
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_no_command_prints_usage_and_exits_2(tmp_path):
    proc = run_dlx([], tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "usage: dlx" in proc.stdout + proc.stderr


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, tmp_path):
    proc = run_dlx([flag], tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dlx {project_version()}"


# ---------------------------------------------------------------- dlx train --help / --cfg job

def _help_groups(stdout: str) -> dict[str, list[str]]:
    """{group: [options]} from the '== Configuration groups ==' section of Hydra's help."""
    section = stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {}
    for line in section.splitlines():
        match = re.match(r"^([a-z_/]+): (.+)$", line.strip())
        if match:
            groups[match.group(1)] = [o.strip() for o in match.group(2).split(",")]
    return groups


@pytest.fixture(scope="module")
def train_help(tmp_path_factory) -> subprocess.CompletedProcess:
    cwd = tmp_path_factory.mktemp("train-help")
    proc = run_dlx(["train", "--help"], cwd, timeout=120)
    proc.cwd = cwd
    return proc


def test_train_help_lists_every_config_group_and_option(train_help):
    assert train_help.returncode == 0, train_help.stderr
    assert "== Configuration groups ==" in train_help.stdout, train_help.stdout
    groups = _help_groups(train_help.stdout)
    assert set(GROUPS) <= set(groups), f"groups missing from the help: {set(GROUPS) - set(groups)}"
    for group in GROUPS:
        options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        missing = [o for o in options if o not in groups[group]]
        assert not missing, f"{group}: options {missing} missing from the help line {groups[group]}"
    assert "== Config ==" in train_help.stdout
    assert not (train_help.cwd / "outputs").exists(), "--help must not create a run directory"


def test_train_help_lists_only_selectable_options(train_help):
    groups = _help_groups(train_help.stdout)
    internal = {g: [o for o in opts if o.startswith("schema_")] for g, opts in groups.items()}
    assert not any(internal.values()), f"internal schemas shown as options: {internal}"


def test_train_cfg_job_prints_the_composed_defaults(tmp_path):
    proc = run_dlx(["train", "--cfg", "job"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert isinstance(cfg, dict), proc.stdout
    assert set(GROUPS) <= set(cfg), f"groups missing from the composed config: {set(GROUPS) - set(cfg)}"
    assert cfg["dataset"]["_target_"] == "dlx.data.digits"
    assert cfg["model"]["_target_"] == "dlx.models.MLP"
    defaults = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
    for group in ("optimizer", "scheduler"):
        option = yaml.safe_load((REPO / "conf" / group / f"{chosen[group]}.yaml").read_text())
        assert cfg[group]["_target_"] == option["_target_"], (group, cfg[group])
    assert cfg["seed"] == 0 and "hydra" not in cfg
    assert not (tmp_path / "outputs").exists(), "--cfg job must not create a run directory"


def test_train_cfg_job_applies_overrides(tmp_path):
    proc = run_dlx(["train", "model=cnn", "optimizer=sgd", "optimizer.lr=0.05", "--cfg", "job"], tmp_path,
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["_target_"] == "dlx.models.CNN"
    assert cfg["optimizer"]["_target_"] == "torch.optim.SGD" and cfg["optimizer"]["lr"] == pytest.approx(0.05)
    assert cfg["optimizer"]["momentum"] == 0  # sgd.yaml, not momentum.yaml, which shares SGD as its target
    assert cfg["dataset"]["_target_"] == "dlx.data.digits"



# the last release of each dependency with a known hole: torch.load(weights_only=True) bypass (fixed in 2.6),
# instantiate without the block-list of dangerous targets (1.3.4), MLflow server advisories (through 3.10.1)
VULNERABLE = {"torch": "2.5.1", "hydra-core": "1.3.3", "mlflow": "3.10.1"}


@pytest.mark.parametrize("name, version", VULNERABLE.items())
def test_dependency_floors_exclude_releases_with_known_holes(name, version):
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    (req,) = [r for r in deps if r.name == name]
    assert not req.specifier.contains(version), f"{req} admits {name} {version}"
