"""Verify local dataset copies against checksums and file sizes.

* A committed manifest ``data/manifests/<name>.sha256`` (``cats_vs_dogs``: every photo), or else the
  copy's own ``MANIFEST.sha256`` (offline copies carry one), checked by SHA-256.
* ``fashion_mnist`` / ``mnist``: every raw IDX file's size against its header (a truncated file is
  named), the ``.gz`` files against torchvision's own MD5 list.

Every problem names the file and the fix (delete it and re-download it, or where to get it).

``python -m pruninglib.data_check cats_vs_dogs`` prints a line per problem and exits non-zero if there is one.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torchvision

from pruninglib.data import DATASETS, IDX_DATASETS, REPO_ROOT, find_dataset, idx_problems

__all__ = ["verify_manifest", "verify_dataset", "main"]

MANIFESTS = {"cats_vs_dogs": REPO_ROOT / "data" / "manifests" / "cats_vs_dogs.sha256"}
COPY_MANIFEST = "MANIFEST.sha256"  # an offline copy's own manifest, in the dataset's folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_manifest(folder: Path, manifest: Path, fix: str = "") -> list[str]:
    """Compare every ``<sha256>  <relative path>`` line of ``manifest`` with the files under ``folder``.

    Args:
        fix: where to get the files again; appended to every message when given.

    Returns:
        One message per missing or mismatching file (empty when all match).

    Used by ``python -m pruninglib.data_check``; no lesson calls it.
    """
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        f = folder / rel.strip()
        if not f.exists():
            problems.append(f"missing: {f}" + (f"; {fix}" if fix else ""))
        elif _sha256(f) != digest:
            problems.append(f"checksum mismatch: {f} (re-download it)" + (f"; {fix}" if fix else ""))
    return problems


def _gz_problems(name: str, root: Path) -> list[str]:
    """The ``.gz`` files of an MNIST-style copy that fail torchvision's MD5 list."""
    cls = IDX_DATASETS[name]
    raw = root / cls.__name__ / "raw"
    return [f"checksum mismatch: {raw / Path(url).name}; delete it and re-download it: {DATASETS[name].how}"
            for url, md5 in cls.resources if (raw / Path(url).name).is_file()
            and not torchvision.datasets.utils.check_integrity(str(raw / Path(url).name), md5)]


def verify_dataset(name: str) -> list[str]:
    """Check the copy of ``name`` found on the search path; return the problems found.

    Every message names the file and the fix. Reads the files, changes nothing.

    Raises:
        ValueError: nothing is known to check ``name`` against (no manifest, not IDX).

    Used by ``python -m pruninglib.data_check``; no lesson calls it.
    """
    root = find_dataset(name)
    folder = root / DATASETS[name].folder
    manifest = MANIFESTS[name] if name in MANIFESTS else folder / COPY_MANIFEST
    problems = []
    if manifest.is_file():
        problems += verify_manifest(folder, manifest, fix=f"get it again: {DATASETS[name].how}")
    elif name not in IDX_DATASETS:
        raise ValueError(f"no checksums known for {name!r} (no {manifest}); known: "
                         f"{sorted(MANIFESTS) + sorted(IDX_DATASETS)} and copies holding a {COPY_MANIFEST}")
    if name in IDX_DATASETS:
        problems += idx_problems(name, root) + _gz_problems(name, root)
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglib.data_check NAME...``: print the problems of each copy; 1 if there are any.

    Used by ``python -m pruninglib.data_check``; no lesson calls it.
    """
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
