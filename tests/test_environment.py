"""environment.yml (conda) and pyproject.toml (pip) list the same packages."""
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(req: str) -> str:
    return req.replace(" ", "").lower()


def _pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    """environment.yml's pip section is pyproject's dependencies plus every optional extra
    (bench, browser), with the same version ranges: a conda environment can do everything."""
    project = _pyproject()
    wanted = list(project["dependencies"])
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        wanted += reqs
    have = {_name(d): _spec(d) for d in _pip_section()}
    want = {_name(d): _spec(d) for d in wanted}
    missing = sorted(set(want) - set(have))
    assert not missing, f"add {[want[n] for n in missing]} to environment.yml's pip section (they are in pyproject.toml)"
    assert have == want, "environment.yml and pyproject.toml disagree; make them list the same ranges"


def test_the_selenium_driver_is_an_extra():
    """`make test-browser` installs the `browser` extra; it must bring the Selenium driver."""
    extras = _pyproject().get("optional-dependencies", {})
    assert "selenium" in {_name(r) for r in extras.get("browser", [])}, \
        "add selenium to [project.optional-dependencies] browser in pyproject.toml"


#: Where the course machines keep the wheels pip installs from (pip's find-links and file indexes).
WHEEL_DIRS = [Path("/opt/wheels"), Path("/opt/pypi/files"), Path("/opt/pypi-more/files")]


def _wheels_on_disk(name: str) -> list[str]:
    """Versions of ``name``'s wheels for this Python found in :data:`WHEEL_DIRS`."""
    import sys

    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    out = []
    for d in WHEEL_DIRS:
        for w in d.glob(f"{name}-*.whl") if d.is_dir() else []:
            parts = w.name.split("-")
            if len(parts) >= 3 and parts[2] == tag:
                out.append(parts[1].split("+")[0])
    return sorted(set(out))


def test_requirements_admit_the_wheels_on_disk():
    """The ranges in pyproject.toml admit the newest torch/torchvision wheels that lie on this disk,
    so `make install` takes them instead of downloading several GB."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    spec = {_name(d): SpecifierSet(d[len(_name(d)):].strip()) for d in deps}
    found = {n: _wheels_on_disk(n) for n in ("torch", "torchvision")}
    if not all(found.values()):
        import pytest
        pytest.skip(f"no torch/torchvision wheels for this Python in {[str(d) for d in WHEEL_DIRS]}: "
                    "not a course machine")
    for name, versions in found.items():
        newest = max(versions, key=Version)
        assert newest in spec[name], f"{name}{spec[name]} does not admit the wheel on disk ({newest})"
