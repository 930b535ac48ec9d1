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


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_name(d): _spec(d) for d in deps} == {_name(d): _spec(d) for d in pip}


def test_requirements_admit_the_wheels_on_disk():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.specifiers import SpecifierSet
    spec = {_name(d): SpecifierSet(d[len(_name(d)):].strip()) for d in deps}
    assert "2.14.1" in spec["torch"] and "0.29.1" in spec["torchvision"]
