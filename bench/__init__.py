"""Benchmarks of the Pruning Notebooks: one command, one results file.

``python -m bench`` (``make bench``) runs every benchmark on the current device and writes
``bench/RESULTS.md`` plus the figures it draws in ``bench/figures/``; ``--quick`` runs the same
code on tiny inputs (what ``tests/test_bench.py`` executes), ``--only`` picks sections and
``--out`` another folder. Each benchmark module exposes ``run(quick: bool = False) -> dict``;
:data:`SECTIONS` lists them in the order of RESULTS.md.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SectionInfo", "SECTIONS", "ALIASES"]


@dataclass(frozen=True)
class SectionInfo:
    """A benchmark of RESULTS.md.

    Attributes:
        key: the name used with ``--only`` (and the module ``bench.<key>``).
        title: the section heading.
        core: True for the benchmarks of this package's own harness (speed-up, peers,
            collection): their failure fails the run. The others are optional: when missing
            or raising, the section says "not available: <reason>" and the run goes on.
    """

    key: str
    title: str
    core: bool


SECTIONS: tuple[SectionInfo, ...] = (
    SectionInfo("speedup", "1. Real speed-up against the limit (VGG16, ResNet-56)", True),
    SectionInfo("vgg16_speed", "1b. VGG16 latency and size ratios (lesson 04)", False),
    SectionInfo("deploy_speed", "1c. Deployed pruned networks: rounding, BN folding, channels_last, compile, ONNX Runtime",
                False),
    SectionInfo("resnet_time", "1d. Where ResNet-56's time goes, unpruned and pruned (why 1c misses its target)", False),
    SectionInfo("peers", "2. Peers on the same work: torch.nn.utils.prune and Torch-Pruning", True),
    SectionInfo("criterion_cost", "3. Criterion cost: one scoring pass against one training pass", False),
    SectionInfo("oracle_speed", "4. The oracle", False),
    SectionInfo("hessian_scaling", "5. Exact Hessian and OBS", False),
    SectionInfo("collection", "6. The whole collection: notebook wall times", True),
    SectionInfo("dask_sweep", "7. A sweep on 2 Dask workers against serially (lesson 00 grid)", False),
)

#: Short names accepted by ``--only``.
ALIASES: dict[str, str] = {
    "oracle": "oracle_speed",
    "hessian": "hessian_scaling",
    "obs": "hessian_scaling",
    "criterion": "criterion_cost",
    "criteria": "criterion_cost",
    "vgg16": "vgg16_speed",
    "notebooks": "collection",
    "deploy": "deploy_speed",
    "dask": "dask_sweep",
}
