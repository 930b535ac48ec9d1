"""Helpers every benchmark shares: Markdown tables, the run's environment, fair latency timing,
the uniform L1 pruning plan, and turning a benchmark's result dict into a RESULTS.md section.

Conventions (``bench/RESULTS.md`` states them too):

* every ratio (pruned vs unpruned, ours vs a peer) is taken in ONE process, with the models
  timed back to back and *interleaved* (one forward of each model per round), so a load change
  on a shared machine hits all of them alike (:func:`pruninglib.core.metrics.interleaved_latency`);
* a latency is quoted as the median of the repeats, with the min and max beside it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import numbers
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.criteria import get_criterion
from pruninglib.core.metrics import LatencyResult
from pruninglib.core.surgery import prune_channels
from pruninglib.tables import markdown_table
from pruninglib.utils import describe_device, get_device

__all__ = [
    "BENCH_DIR",
    "TP_INSTALL_HINT",
    "Section",
    "cpu_seconds",
    "environment",
    "environment_markdown",
    "fmt_bytes_mb",
    "fmt_latency",
    "fmt_ms",
    "fmt_num",
    "md_table",
    "nonzero_parameters",
    "pruned_copy",
    "randomize_batchnorm",
    "render_result",
    "time_call",
    "torch_pruning_or_none",
    "uniform_filter_plan",
    "vgg16_narrow",
]

#: The folder holding this package (default output folder of ``python -m bench``).
BENCH_DIR: Path = Path(__file__).resolve().parent

#: What to tell a user who lacks the optional peer.
TP_INSTALL_HINT = 'Torch-Pruning is not installed: skipped. Install it with `pip install -e .` (a regular dependency).'


# ------------------------------------------------------------------------- formatting


def fmt_num(x: Any, digits: int = 4) -> str:
    """A number for a table: ints with thousands separators, floats to ``digits`` significant
    digits (scientific for very small/large), anything else via ``str``."""
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        x = float(x)
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e7):
            return f"{x:.{max(1, digits - 1)}e}"
        return f"{x:.{digits}g}"
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return fmt_num(x.item(), digits)
    return str(x)


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds: whole numbers from 100 ms up, else 3 significant digits."""
    x = seconds * 1e3
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_latency(res: LatencyResult | Mapping[str, float]) -> str:
    """``"median [min, max]"`` in milliseconds of a LatencyResult (or its ``as_dict()``)."""
    d = res if isinstance(res, Mapping) else res.as_dict()
    return f"{fmt_ms(d['median_s'])} [{fmt_ms(d['min_s'])}, {fmt_ms(d['max_s'])}]"


def fmt_bytes_mb(n: int) -> str:
    """Bytes as megabytes (10^6) with 3 significant digits."""
    return f"{n / 1e6:.3g}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
             align: Sequence[str] | None = None) -> str:
    """:func:`pruninglib.tables.markdown_table` with the bench's conventions: numbers formatted by
    :func:`fmt_num`, the first column left-aligned and the others right-aligned (unless ``align``)."""
    headers = list(headers)
    align = list(align) if align is not None else ["l"] + ["r"] * (len(headers) - 1)
    return markdown_table(list(rows), headers=headers, align=align, fmt=fmt_num)


# ------------------------------------------------------------------------ environment


def cpu_seconds() -> float:
    """User + system CPU seconds used by this process so far (children included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """The conditions of this run: device, threads, library versions, date, load."""
    device = device or get_device()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "device": describe_device(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "torch_pruning": _version("torch-pruning"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_1min": round(load[0], 2),
    }


def environment_markdown(env: Mapping[str, Any]) -> str:
    """The environment as a two-column table."""
    return md_table(["", ""], [(k, str(v)) for k, v in env.items()], align=["l", "l"])


# ----------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], repeats: int = 1) -> tuple[list[float], Any]:
    """Wall seconds of ``repeats`` calls of ``fn`` (and the last call's return value)."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


# ---------------------------------------------------------------------------- pruning


def uniform_filter_plan(model: nn.Module, fraction: float, criterion: str = "weight_l1"
                        ) -> dict[str, list[int]]:
    """Remove the same fraction of filters in every prunable conv, lowest score first.

    Li et al. 2017 (Pruning Filters for Efficient ConvNets), Sec. 3.1: rank the filters of a
    layer by :math:`s_j = \\sum |\\mathcal{F}_{i,j}|` and drop the ``round(fraction * n)``
    smallest (at least one filter stays). Ties are broken by index.

    Args:
        model: a model :func:`~pruninglib.core.graph.prunable_layers` understands (only its
            convs are planned: for torchvision VGG16 the 13 convs, not the classifier; for
            CIFAR ResNets the inner conv of each block).
        fraction: share of filters to remove per layer, in [0, 1).
        criterion: a registered criterion name.

    Returns:
        ``{layer name: sorted indices to remove}`` (indices of the unpruned layer).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    scores = get_criterion(criterion)(model, None, kinds=("conv",))
    plan = {}
    for name, s in scores.items():
        n = min(int(round(fraction * len(s))), len(s) - 1)
        order = torch.argsort(s.detach().cpu().double(), stable=True)
        plan[name] = sorted(order[:n].tolist())
    return plan


def vgg16_narrow(hidden: int = 256, num_classes: int = 10) -> nn.Module:
    """torchvision VGG16 with its 13 convs intact but a narrow classifier (quick mode only).

    The structure (``features`` -> ``AdaptiveAvgPool2d(7)`` -> flatten -> three Linears) is
    the one the full benchmark prunes, so the same code paths run; only the two 4096-wide
    Linears (120 M of the 138 M parameters) shrink to ``hidden``, which keeps a smoke test
    fast and light. Initialised like torchvision (Kaiming-normal convs, N(0, 0.01) Linears).
    """
    from torchvision.models.vgg import VGG, cfgs, make_layers

    class _NarrowVGG16(VGG):  # a torchvision VGG (same forward), built without the 4096 layers
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.features = make_layers(cfgs["D"], batch_norm=False)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                nn.Linear(hidden, num_classes))

    m = _NarrowVGG16()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.01)
            nn.init.zeros_(mod.bias)
    return m


def pruned_copy(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> nn.Module:
    """A deep copy of ``model`` with the plan's channels physically removed."""
    return prune_channels(copy.deepcopy(model), plan)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    A freshly built network has ``gamma=1, beta=0, mean=0, var=1``, so a surgery that sliced
    BatchNorm wrongly could go unnoticed; with random values an equivalence check catches it.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                dev = m.running_mean.device if m.running_mean is not None else None
                if m.affine:
                    m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
                    m.bias.copy_(torch.empty(n).uniform_(-0.2, 0.2, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.empty(n).uniform_(-0.2, 0.2, generator=g).to(dev))
                    m.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g).to(dev))
    return model


def nonzero_parameters(model: nn.Module) -> int:
    """Nonzero entries of the weights the model actually computes with.

    For a layer pruned with ``torch.nn.utils.prune`` that is ``weight_orig * weight_mask``
    (the attribute ``weight``), not the stored ``weight_orig``.
    """
    total = 0
    for m in model.modules():
        for n, p in m.named_parameters(recurse=False):
            base = n[:-5] if n.endswith("_orig") and hasattr(m, n[:-5] + "_mask") else n
            total += int(torch.count_nonzero(getattr(m, base)).item())
    return total


def torch_pruning_or_none() -> Any:
    """The ``torch_pruning`` module, or ``None`` when the optional peer is not installed."""
    try:
        import torch_pruning  # noqa: PLC0415

        return torch_pruning
    except ImportError:
        return None


# ------------------------------------------------------------------- result -> Markdown


@dataclass
class Section:
    """One section of RESULTS.md.

    Attributes:
        key: the ``--only`` name.
        title: the heading.
        markdown: the body.
        figures: file names written under ``figures/``.
        status: ``"ok"``, ``"not available"`` or ``"FAILED"``.
        seconds: wall seconds the benchmark took.
        cpu_s: CPU seconds it took.
        measured: when it ran (ISO date; shown in its footer, so a merged file says which run is whose).
    """

    key: str
    title: str
    markdown: str = ""
    figures: list[str] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0
    cpu_s: float = 0.0
    measured: str = ""


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.detach().cpu().tolist()
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.item() if v.size == 1 else v.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, LatencyResult):
        return v.as_dict()
    return v


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, numbers.Number))


def _is_figure(v: Any) -> bool:
    return hasattr(v, "savefig")


def _save_figures(figs: Any, fig_dir: Path, prefix: str) -> list[str]:
    """Save Figure objects / copy image files into ``fig_dir``; return the file names."""
    if figs is None:
        return []
    if _is_figure(figs) or isinstance(figs, (str, os.PathLike)):
        figs = [figs]
    items = list(figs.items()) if isinstance(figs, Mapping) else [(None, f) for f in figs]
    names = []
    fig_dir.mkdir(parents=True, exist_ok=True)
    for i, (label, f) in enumerate(items):
        if _is_figure(f):
            stem = str(label) if label else f"{prefix}_{i + 1}"
            name = stem if stem.endswith(".png") else f"{stem}.png"
            if not name.startswith(prefix):
                name = f"{prefix}_{name}"
            f.savefig(fig_dir / name, dpi=110)
            names.append(name)
        else:
            src = Path(f)
            if not src.is_file():
                continue
            name = src.name  # keep the name: the benchmark's own Markdown may link it
            dst = fig_dir / name
            if src.resolve() != dst.resolve():
                dst.write_bytes(src.read_bytes())
            names.append(name)
    return names


_TEXT_KEYS = ("markdown", "md")
_NOTE_KEYS = ("note", "notes", "summary", "text", "message")
_FIG_KEYS = ("figures", "figure", "figs")


_MAX_ROWS = 40


def _table_from_records(records: list[Mapping[str, Any]]) -> str:
    if len(records) > _MAX_ROWS:
        keep = _MAX_ROWS // 2
        more = len(records) - 2 * keep
        return (_table_from_records(records[:keep] + records[-keep:])
                + f"\n\n({more} middle rows of {len(records)} not shown)")
    headers: list[str] = []
    for r in records:
        for k in r:
            if k not in headers:
                headers.append(str(k))
    rows = [[_fmt_value(r.get(h, "")) for h in headers] for r in records]
    return md_table(headers, rows)


def _fmt_value(v: Any) -> Any:
    v = _plain(v)
    if _is_scalar(v):
        return v
    if isinstance(v, (list, tuple)) and len(v) <= 8 and all(_is_scalar(x) for x in v):
        return ", ".join(fmt_num(x) for x in v)
    if isinstance(v, Mapping) and len(v) <= 4 and all(_is_scalar(x) for x in v.values()):
        return ", ".join(f"{k}={fmt_num(x)}" for k, x in v.items())
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _render_generic(d: Mapping[str, Any], level: int = 0) -> list[str]:
    """Tables for what a dict holds: lists of records, dicts of records, scalar fields."""
    out: list[str] = []
    scalars: list[tuple[str, Any]] = []
    for k, v in d.items():
        v = _plain(v)
        if k in _FIG_KEYS or k in _TEXT_KEYS or _is_figure(v):
            continue
        if k in _NOTE_KEYS and isinstance(v, (str, list)):
            lines = [v] if isinstance(v, str) else [str(x) for x in v]
            out += [("- " + x) if isinstance(v, list) else x for x in lines] + [""]
        elif _is_scalar(v):
            scalars.append((k, v))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(_plain(x), Mapping) for x in v):
            out += [f"**{k}**", "", _table_from_records([_plain(x) for x in v]), ""]
        elif (isinstance(v, Mapping) and v and all(isinstance(_plain(x), Mapping) for x in v.values())
              and all(all(_is_scalar(_plain(y)) for y in _plain(x).values()) for x in v.values())):
            rows = [{"": kk, **_plain(x)} for kk, x in v.items()]
            out += [f"**{k}**", "", _table_from_records(rows), ""]
        elif isinstance(v, Mapping) and v and level < 2:
            out += [f"**{k}**", ""] + _render_generic(v, level + 1)
        else:
            scalars.append((k, _fmt_value(v)))
    if scalars:
        out = [md_table(["quantity", "value"], scalars, align=["l", "r"]), ""] + out
    return out


def render_result(result: Any, fig_dir: Path, prefix: str) -> tuple[str, list[str]]:
    """Turn a benchmark's ``run()`` result into Markdown plus saved figures.

    Understood keys: ``markdown`` (used verbatim; then only the figures are added),
    ``figures`` (matplotlib Figures, a ``name -> Figure`` dict, or image paths; saved or
    copied to ``fig_dir``; Figures are saved as ``<prefix>_<name>.png``, files keep their
    name), ``notes`` (text). Without ``markdown``,
    every list of records or dict of records becomes a table and the scalar fields a
    ``quantity | value`` table.

    Returns:
        ``(markdown, figure file names)``.
    """
    if not isinstance(result, Mapping):
        raise TypeError(f"run() must return a dict, got {type(result).__name__}")
    figs: list[str] = []
    for k in _FIG_KEYS:
        if k in result:
            figs += _save_figures(result[k], fig_dir, prefix)
    # Figures stored under other keys.
    for k, v in result.items():
        if k not in _FIG_KEYS and _is_figure(v):
            figs += _save_figures({k: v}, fig_dir, prefix)
    text = next((result[k] for k in _TEXT_KEYS if isinstance(result.get(k), str)), None)
    body = text.strip() if text is not None else "\n".join(_render_generic(result)).strip()
    return body, figs
