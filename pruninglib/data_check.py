"""Verify local dataset copies against checksums.

* ``cats_vs_dogs``: every photo against ``data/manifests/cats_vs_dogs.sha256`` (SHA-256).
* ``fashion_mnist`` / ``mnist``: the raw files against torchvision's own MD5 list.

``python -m pruninglib.data_check cats_vs_dogs`` prints a line per problem and exits non-zero if there is one.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torchvision

from pruninglib.data import REPO_ROOT, find_dataset

__all__ = ["verify_manifest", "verify_dataset", "main"]

MANIFESTS = {"cats_vs_dogs": REPO_ROOT / "data" / "manifests" / "cats_vs_dogs.sha256"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_manifest(folder: Path, manifest: Path) -> list[str]:
    """Compare every ``<sha256>  <relative path>`` line of ``manifest`` with the files under ``folder``.

    Returns:
        One message per missing or mismatching file (empty when all match).
    """
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        f = folder / rel.strip()
        if not f.exists():
            problems.append(f"missing: {f}")
        elif _sha256(f) != digest:
            problems.append(f"checksum mismatch: {f} (re-download it)")
    return problems


def verify_dataset(name: str) -> list[str]:
    """Check the copy of ``name`` found on the search path; return the problems found."""
    root = find_dataset(name)
    if name in MANIFESTS:
        return verify_manifest(root / name, MANIFESTS[name])
    if name in ("fashion_mnist", "mnist"):
        cls = torchvision.datasets.FashionMNIST if name == "fashion_mnist" else torchvision.datasets.MNIST
        folder = root / cls.__name__ / "raw"
        problems = []
        for url, md5 in cls.resources:
            fname = Path(url).name
            gz, raw = folder / fname, folder / fname.replace(".gz", "")
            if gz.exists():
                if not torchvision.datasets.utils.check_integrity(str(gz), md5):
                    problems.append(f"checksum mismatch: {gz}")
            elif not raw.exists():
                problems.append(f"missing: {raw}")
        return problems
    raise ValueError(f"no checksums known for {name!r}; known: {sorted(MANIFESTS) + ['fashion_mnist', 'mnist']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pruninglib.data_check", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    bad = 0
    for n in args.names:
        problems = verify_dataset(n)
        print(f"{n}: {'OK' if not problems else f'{len(problems)} problem(s)'} ({find_dataset(n).resolve()})")
        for p in problems[:20]:
            print("  ", p)
        bad += len(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
