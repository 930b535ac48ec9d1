"""How the exact Hessian and OBS scale with the number of weights (Lesson 01).

For an MLP ``49 -> h -> 10`` (tanh; ``P = 60 h + 10`` parameters) on ``N`` random inputs, this
records, per size:

* ``hessian_s``: building the exact Hessian with ``torch.func`` (:func:`pruninglib.curvature.hessian.exact_hessian`,
  float64), median of the repeats -- :math:`O(P^2 N)` work, :math:`O(P^2)` memory;
* ``obs_s``: OBS on it: the full inverse (Cholesky, :math:`O(P^3)`) plus one pass of pruning
  (all :math:`P` saliencies :math:`\\theta_q^2/2[H^{-1}]_{qq}`, the deletion of the least salient
  weight with its update of all others, and the Sherman-Morrison downdate of :math:`H^{-1}`,
  :math:`O(P^2)`), median of the repeats;
* ``obs_step_s``: that last pass alone; deleting ``k`` weights costs about ``k`` times it;
* ``peak_mb``: the process's peak resident memory during the size's work above its starting
  level (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; ``None`` elsewhere), and
  ``dense_mb``: the two dense ``P x P`` float64 matrices (:math:`H`, :math:`H^{-1}`).

Random inputs: the timings do not depend on the data's values. Full mode goes up to the
largest size whose dense matrices (plus workspace) fit in 8 GiB and take a few minutes on a
2-core CPU; quick mode runs three tiny sizes in a few seconds.

Usage: ``python -m bench.hessian_scaling [--quick]`` prints a Markdown table.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from pruninglib.criteria.obs import inverse_hessian, obs_saliency, obs_update, sherman_morrison_remove
from pruninglib.curvature.hessian import exact_hessian
from pruninglib.curvature.params import flatten_params
from pruninglib.models import MLP
from pruninglib.utils import describe_device, set_seed

__all__ = ["run", "to_markdown", "MEMORY_LIMIT_BYTES"]

MEMORY_LIMIT_BYTES = 8 * 2**30
_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"{key}:\s+(\d+)", _STATUS.read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _estimate_bytes(p: int, n: int, width: int, chunk: int) -> int:
    dense = 3 * p * p * 8  # H, its Cholesky factor and H^-1 (the peak, during the inversion)
    workspace = 4 * chunk * n * width * 8  # activations of a chunk of reverse-over-reverse rows
    return dense + workspace


def _one_size(hidden: int, n: int, repeats: int, chunk: int) -> dict[str, Any]:
    set_seed(0)
    model = MLP(49, (hidden,), 10, activation="tanh").double()
    x = torch.randn(n, 49, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    theta, spec = flatten_params(model)
    p = spec.numel
    prunable = spec.mask([k for k in spec.names if k.endswith("weight")])
    can_peak = _reset_peak()
    base = _status_kb("VmRSS")
    hess_s, H = _median_time(lambda: exact_hessian(model, (x, y), F.cross_entropy, damping=1e-2,
                                                   chunk_size=chunk, max_params=10**6), repeats)

    # a random network is not at a minimum: shift H by a Gershgorin bound so it is positive
    # definite (O(P^2), outside the timings; a trained network needs only its weight decay)
    off = H.abs().sum(1) - torch.diagonal(H).abs()
    H.diagonal().add_(max(0.0, float((off - torch.diagonal(H)).max())) + 1e-3)

    def obs_pass() -> tuple[torch.Tensor, torch.Tensor]:
        H_inv = inverse_hessian(H)
        return H_inv, _obs_step(theta, H_inv, prunable)

    obs_s, (H_inv, theta1) = _median_time(obs_pass, repeats)
    del H
    # further passes continue the same iterative OBS (each deletes the next weight)
    state = {"theta": theta1}

    def next_pass() -> None:
        state["theta"] = _obs_step(state["theta"], H_inv, prunable)

    step_s, _ = _median_time(next_pass, max(repeats, 3))
    peak = _status_kb("VmHWM")
    peak_mb = (peak - base) / 1024 if (can_peak and peak is not None and base is not None) else None
    return {"hidden": hidden, "n_weights": int(prunable.sum()), "n_params": p, "n_samples": n,
            "hessian_s": hess_s, "obs_s": obs_s, "obs_step_s": step_s,
            "peak_mb": peak_mb, "dense_mb": 2 * p * p * 8 / 2**20}


def _obs_step(theta: torch.Tensor, H_inv: torch.Tensor, prunable: torch.Tensor) -> torch.Tensor:
    """One OBS pass: all saliencies, the least salient deletion, its update, and the
    Sherman-Morrison downdate of ``H_inv`` (in place, so no second ``P x P`` matrix)."""
    sal = obs_saliency(theta, H_inv).masked_fill(~prunable | (theta == 0), float("inf"))
    q = int(sal.argmin())
    new = theta + obs_update(theta, H_inv, q)
    new[q] = 0.0
    sherman_morrison_remove(H_inv, q, inplace=True)
    return new


def run(quick: bool = False, progress: bool = False) -> dict:
    """Time the exact Hessian and OBS against the number of weights.

    Args:
        quick: three tiny sizes (a few seconds) instead of the full curve (a few minutes).
        progress: print one line per size as it finishes.

    Returns:
        ``{"name", "device", "threads", "quick", "rows": [one dict per size], "skipped": [...],
        "slopes": {time: log-log slope}, "markdown": the table, "figures": {"scaling": Figure}}``;
        each row has ``hidden, n_weights, n_params, n_samples, hessian_s, obs_s, obs_step_s,
        peak_mb, dense_mb``.
    """
    if quick:
        hiddens, n, repeats, chunk = [2, 4, 8], 32, 2, 128
    else:
        hiddens, n, repeats, chunk = [8, 16, 32, 64, 128, 256], 256, 3, 256
    rows, skipped = [], []
    for h in hiddens:
        p = 60 * h + 10
        need = _estimate_bytes(p, n, 49 + h + 10, chunk)
        if need > MEMORY_LIMIT_BYTES:
            skipped.append({"hidden": h, "n_params": p, "estimated_gib": need / 2**30})
            continue
        rows.append(_one_size(h, n, repeats if p < 5000 else 1, chunk))
        if progress:
            r = rows[-1]
            print(f"[hessian_scaling] P={p}: Hessian {r['hessian_s']:.2f} s, OBS {r['obs_s']:.2f} s", flush=True)
    result = {"name": "hessian_scaling", "device": describe_device(torch.device("cpu")),
              "threads": torch.get_num_threads(), "quick": quick, "rows": rows, "skipped": skipped,
              "slopes": _slopes(rows)}
    result["markdown"] = to_markdown(result)
    result["figures"] = {"scaling": _figure(rows)}
    return result


def _slopes(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Log-log slope of each time against the number of parameters (2 = quadratic, 3 = cubic)."""
    import numpy as np

    out: dict[str, float | None] = {}
    for key in ("hessian_s", "obs_s", "obs_step_s"):
        pts = [(r["n_params"], r[key]) for r in rows if r[key] > 0]
        out[key] = float(np.polyfit(np.log([p for p, _ in pts]), np.log([t for _, t in pts]), 1)[0]) \
            if len(pts) >= 2 else None
    return out


def _figure(rows: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    p = [r["n_params"] for r in rows]
    for key, label in (("hessian_s", "exact Hessian (torch.func)"), ("obs_s", "OBS: inverse + 1 pass"),
                       ("obs_step_s", "1 OBS pass (Sherman-Morrison)")):
        ax.loglog(p, [max(r[key], 1e-6) for r in rows], marker="o", label=label)
    ax.set_xlabel("parameters P")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Exact Hessian and OBS against model size")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def to_markdown(result: dict) -> str:
    """The result of :func:`run` as a Markdown table."""
    lines = [f"Exact Hessian + OBS scaling ({result['device']}; quick={result['quick']})", "",
             "| weights | params | samples | Hessian (s) | OBS: inverse + 1 pass (s) | 1 OBS pass (s) "
             "| peak RSS (MB) | H + H^-1 (MB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['n_weights']} | {r['n_params']} | {r['n_samples']} | {r['hessian_s']:.3f} | "
                     f"{r['obs_s']:.3f} | {r['obs_step_s']:.4f} | {peak} | {r['dense_mb']:.1f} |")
    for s in result.get("skipped", []):
        lines.append(f"\n(skipped {s['n_params']} params: ~{s['estimated_gib']:.1f} GiB > 8 GiB)")
    sl = result.get("slopes") or {}
    if sl.get("hessian_s") is not None:
        lines += ["", f"Log-log slopes against P: Hessian {sl['hessian_s']:.2f} (theory 2 at fixed N), "
                  f"OBS inverse + pass {sl['obs_s']:.2f} (theory 3 once the inverse dominates), "
                  f"one pass {sl['obs_step_s']:.2f} (theory 2). {result['threads']} torch threads; "
                  "inputs are random (timings do not depend on the values)."]
        if result.get("quick"):
            lines.append("Quick mode: tiny sizes, dominated by fixed overheads; the slopes mean little.")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three tiny sizes only")
    print(run(quick=ap.parse_args().quick, progress=True)["markdown"])
