"""VGG16 (Cats vs Dogs): does removing filters make it faster and smaller, and what does ranking cost?

Gildenblat's blog post "Pruning deep neural networks to make them fast and small" removes
2,560 of VGG16's 4,224 conv filters (Taylor criterion, Molchanov et al. 2017) and reports
538 MB -> 150 MB (3.6x) and, for one image on an i7 CPU, 0.78 s -> 0.277 s (2.8x). This
benchmark measures, in one run on this machine:

1. **Pruning levels.** 0, 512, ..., 2,560 filters removed from ``vgg16_transfer`` by the
   normalised Taylor ranking (``rank_filters``; re-ranked after each 512 on a few batches of
   photos, no fine-tuning -- speed and size do not depend on fine-tuning). For each level:
   parameters, size on disk, MACs, batch-1 latency, and the speed-up against the MAC ratio
   (the MAC ratio is the limit; the target is at least 0.8 of it).
2. **Ranking cost.** One Taylor ranking pass against one plain training pass (forward,
   backward, SGD step, all layers trainable, as during fine-tuning) on the same batches;
   the target is at most 1.3x. Both the criterion as is and with weight gradients skipped
   (``freeze_weights=True``, what :func:`pruninglib.lessons.transfer.rank_filters` does by default).

CPU times are the **thread CPU time on one thread** (``time.thread_time``: what an idle core
would take; other processes on a shared machine do not inflate it), and, for reference, the
wall clock with torch's default threads. Every time is the fastest of ``repeats`` runs; ratios
are taken within this run. Without ImageNet weights (offline) the backbone is random: sizes,
MACs and times are unaffected, but which filters the ranking picks (and so the MACs per level)
can differ from a trained network's.

Usage: ``python -m bench.vgg16_speed [--quick]`` (Markdown tables on stdout), or
``run(quick=True)`` for the dict. Quick form: 64-px inputs, 2 repeats, well under 30 s.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib import data as D
from pruninglib.core.metrics import (count_macs, count_parameters, cpu_latency, layer_times, measure_latency,
                                     part_shares, size_on_disk)
from pruninglib.lessons.transfer import conv_counts, remove_lowest_filters, rank_filters, total_conv_filters, unfreeze
from pruninglib.models import build_model
from pruninglib.utils import describe_device, set_seed

__all__ = ["PUBLISHED", "run", "to_markdown", "main"]

PUBLISHED = {"filters_removed": 2560, "size_mb": (538.0, 150.0), "latency_s": (0.78, 0.277),
             "size_ratio": 538.0 / 150.0, "speedup": 0.78 / 0.277, "device": "Intel i7 CPU (blog post)"}


def _batches(size: int, n_batches: int, batch: int, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """A few batches of real photos when the data are there, random images otherwise."""
    try:
        ds = D.load_dataset("cats_vs_dogs", "train", D.image_transforms(size))
        t = D.to_tensor_dataset(D.subset_per_class(ds, n_batches * batch // 2, seed))
        perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(seed))
        x, y = t.tensors[0][perm], t.tensors[1][perm]
        source = f"{len(x)} cats_vs_dogs training photos"
    except D.DatasetNotFoundError:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n_batches * batch, 3, size, size, generator=g)
        y = torch.arange(n_batches * batch) % 2
        source = f"{len(x)} random images (cats_vs_dogs not found)"
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)], source


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn``, by one thread's CPU time (torch set to 1 thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(old)
    return min(times)


def _train_pass(model: nn.Module, batches: list, opt: torch.optim.Optimizer) -> None:
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def run(quick: bool = False) -> dict:
    """Measure the pruning levels and the ranking cost; return everything as a dict.

    Args:
        quick: 64-px inputs, 2 repeats, one batch of 8 photos (< 30 s); otherwise 224 px,
            10 repeats, two batches of 8 photos.

    Returns:
        ``{"config", "device", "backbone", "data", "levels": [...], "final": {...},
        "published": PUBLISHED, "ranking": {...}, "breakdown": {...}, "seconds",
        "markdown": the tables, "figures": {"speedup_vs_macs": Figure}}``.
    """
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # everything but the wall-clock column runs on one thread
    try:
        return _run(quick, t_start, threads)
    finally:
        torch.set_num_threads(threads)


def _tensor_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's tensors (``torch.save`` adds well under 0.1% for VGG16)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _run(quick: bool, t_start: float, threads: int) -> dict:
    size, repeats, n_batches, batch = (64, 2, 1, 8) if quick else (224, 10, 2, 8)
    step, levels_n = 512, 5
    set_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("vgg16_transfer", pretrained="auto").eval()
    batches, source = _batches(size, n_batches, batch, seed=0)
    x1 = batches[0][0][:1]
    cuda = torch.cuda.is_available()

    def measure(m: nn.Module, removed: int) -> dict:
        lat = cpu_latency(m, x1, warmup=1, repeats=repeats)
        row = {"removed": removed, "filters": total_conv_filters(m), "params": count_parameters(m),
               "size_mb": (_tensor_bytes(m) if quick else size_on_disk(m)) / 1e6,
               "macs_224": count_macs(m, (1, 3, 224, 224)), "macs": count_macs(m, (1, 3, size, size)),
               "cpu_ms": lat.min_s * 1e3, "last_conv": conv_counts(m)["features.28"]}
        if not quick:  # wall clock with torch's default threads: noisy on a shared machine
            wall = measure_latency(m, x1, warmup=1, repeats=repeats, threads=threads)
            row.update(wall_ms=wall.min_s * 1e3, wall_threads=wall.threads)
        if cuda:
            g = copy.deepcopy(m).cuda()
            row["cuda_ms"] = measure_latency(g, x1.cuda(), warmup=3, repeats=repeats).min_s * 1e3
            del g
        return row

    # 1. pruning levels: re-rank after every 512 filters (Taylor, normalised), no fine-tuning
    rows = [measure(model, 0)]
    pruned = copy.deepcopy(model)
    t_rank = 0.0
    for k in range(1, levels_n + 1):
        t0 = time.perf_counter()
        remove_lowest_filters(pruned, rank_filters(pruned, batches), step)
        t_rank += time.perf_counter() - t0
        rows.append(measure(pruned, k * step))
    again = measure(model, 0)  # baseline measured before and after: keep the faster
    for key in ("cpu_ms", "wall_ms", "cuda_ms"):
        if key in again:
            rows[0][key] = min(rows[0][key], again[key])
    base = rows[0]
    for r in rows:
        r["mac_ratio"] = base["macs"] / r["macs"]
        r["mac_ratio_224"] = base["macs_224"] / r["macs_224"]
        r["speedup_cpu"] = base["cpu_ms"] / r["cpu_ms"]
        if "wall_ms" in r:
            r["speedup_wall"] = base["wall_ms"] / r["wall_ms"]
        r["efficiency"] = r["speedup_cpu"] / r["mac_ratio"]
        r["size_ratio"] = base["size_mb"] / r["size_mb"]
        if cuda:
            r["speedup_cuda"] = base["cuda_ms"] / r["cuda_ms"]
    final = rows[-1]

    # where the time goes, unpruned vs final: conv, Linear and the rest (ReLU, pooling, dropout)
    breakdown = {}
    for name, m in (("unpruned", model), ("pruned", pruned)):
        t = layer_times(m, x1, repeats=repeats, warmup=1, stat="min", clock="cpu")
        kinds = {n: type(mod) for n, mod in m.named_modules()}
        conv = sum(v for n, v in t.items() if kinds[n] is nn.Conv2d)
        lin = sum(v for n, v in t.items() if kinds[n] is nn.Linear)
        sh = part_shares(m, size)
        breakdown[name] = {"conv_ms": conv * 1e3, "linear_ms": lin * 1e3,
                           "other_ms": (sum(t.values()) - conv - lin) * 1e3,
                           "conv_macs": sh["features"]["macs"], "linear_macs": sh["classifier"]["macs"]}
    u, q = breakdown["unpruned"], breakdown["pruned"]
    breakdown["conv_time_ratio"] = u["conv_ms"] / q["conv_ms"]
    breakdown["conv_mac_ratio"] = u["conv_macs"] / q["conv_macs"]

    # 2. ranking cost: one Taylor pass vs one training pass (all layers trainable, fine-tuning)
    net = unfreeze(copy.deepcopy(model))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    _train_pass(net, batches, opt)  # warm-up, creates the momentum buffers
    train_s = _best(lambda: _train_pass(net, batches, opt), max(2, repeats // 3))
    rank_s = _best(lambda: rank_filters(net, batches, freeze_weights=True), max(2, repeats // 3))
    rank_full_s = _best(lambda: rank_filters(net, batches, freeze_weights=False), max(2, repeats // 3))
    ranking = {"images": sum(len(b[1]) for b in batches), "size": size, "train_pass_s": train_s,
               "rank_pass_s": rank_s, "rank_pass_weight_grads_s": rank_full_s,
               "ratio": rank_s / train_s, "ratio_weight_grads": rank_full_s / train_s}

    res = {
        "config": {"quick": quick, "size": size, "repeats": repeats, "batches": n_batches, "batch": batch,
                   "step": step, "levels": levels_n},
        "device": describe_device(torch.device("cpu")).replace("1 threads", f"{threads} threads")
        + (f"; {torch.cuda.get_device_name()}" if cuda else ""),
        "backbone": model.backbone_status, "data": source, "levels": rows, "final": final,
        "published": PUBLISHED, "ranking": ranking, "ranking_wall_s_total": t_rank, "breakdown": breakdown,
        "seconds": time.perf_counter() - t_start,
    }
    res["markdown"] = to_markdown(res)  # what ``python -m bench`` puts in RESULTS.md
    res["figures"] = {"speedup_vs_macs": _figure(res)}
    return res


def _figure(res: dict):
    """Measured speed-up against the MAC ratio, one point per pruning level."""
    import matplotlib.pyplot as plt

    lv = res["levels"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    lim = max(r["mac_ratio"] for r in lv) * 1.05
    ax.plot([1, lim], [1, lim], "k--", lw=1, label="= MAC ratio (the limit)")
    ax.plot([1, lim], [1, 0.8 * lim], "k:", lw=1, label="0.8 x MAC ratio (target)")
    ax.plot([r["mac_ratio"] for r in lv], [r["speedup_cpu"] for r in lv], "o-", label="cpu, one thread")
    if "speedup_cuda" in lv[0]:
        ax.plot([r["mac_ratio"] for r in lv], [r["speedup_cuda"] for r in lv], "s-", label="cuda")
    for r in lv:
        ax.annotate(f"{r['removed']}", (r["mac_ratio"], r["speedup_cpu"]), fontsize=7)
    ax.set_xlabel("MAC ratio (unpruned / pruned)")
    ax.set_ylabel("measured speed-up, batch 1")
    ax.set_title(f"VGG16, filters removed (Taylor), {res['config']['size']} px", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def to_markdown(res: dict) -> str:
    """The result of :func:`run` as Markdown tables with a few computed sentences."""
    c, f, p, rk = res["config"], res["final"], res["published"], res["ranking"]
    cuda, wall = "cuda_ms" in f, "wall_ms" in f
    out = [f"### VGG16 pruning speed ({'quick' if c['quick'] else 'full'} form)",
           f"{res['device']}; backbone: {res['backbone']}; ranking data: {res['data']}; input {c['size']} px, "
           f"batch 1; fastest of {c['repeats']} runs. `cpu` = one thread's CPU time"
           + (f"; `wall` = wall clock with {f['wall_threads']} threads." if wall else ".")
           + (" Size = bytes of the tensors (quick form; `torch.save` adds < 0.1%)." if c["quick"] else ""), ""]
    head = ("| filters removed | params (M) | size (MB) | GMACs@224 | MAC ratio | cpu ms | cpu speed-up "
            "| speed-up / MAC ratio |" + (" wall ms | wall speed-up |" if wall else "")
            + (" cuda ms | cuda speed-up |" if cuda else ""))
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in res["levels"]:
        line = (f"| {r['removed']:,} | {r['params'] / 1e6:.1f} | {r['size_mb']:.0f} | {r['macs_224'] / 1e9:.2f} | "
                f"{r['mac_ratio']:.2f}x | {r['cpu_ms']:.1f} | {r['speedup_cpu']:.2f}x | {r['efficiency']:.2f} |")
        if wall:
            line += f" {r['wall_ms']:.1f} | {r['speedup_wall']:.2f}x |"
        if cuda:
            line += f" {r['cuda_ms']:.2f} | {r['speedup_cuda']:.2f}x |"
        out.append(line)
    out += ["", "| after 2,560 filters | blog post (i7) | ours |", "|---|---|---|",
            f"| latency speed-up, 1 image @{c['size']} px | {p['speedup']:.2f}x (0.78 s -> 0.277 s @224) | "
            f"{f['speedup_cpu']:.2f}x cpu" + (f", {f['speedup_wall']:.2f}x wall |" if wall else " |"),
            f"| size ratio | {p['size_ratio']:.2f}x (538 -> 150 MB) | {f['size_ratio']:.2f}x "
            f"({res['levels'][0]['size_mb']:.0f} -> {f['size_mb']:.0f} MB) |",
            f"| MAC ratio @{c['size']} px | (not reported) | {f['mac_ratio']:.2f}x |",
            f"| last conv filters (feed Linear(25088, 4096)) | (not reported) | {f['last_conv']} of 512 |", ""]
    eff = [r["efficiency"] for r in res["levels"][1:]]
    out.append(f"Speed-up / MAC ratio over the levels: {min(eff):.2f} to {max(eff):.2f} "
               f"({'meets' if min(eff) >= 0.8 else 'misses'} the 0.8 target at "
               f"{'every level' if min(eff) >= 0.8 else 'some levels'}).")
    bd = res["breakdown"]
    u, q = bd["unpruned"], bd["pruned"]
    tot = lambda d: d["conv_ms"] + d["linear_ms"] + d["other_ms"]  # noqa: E731
    out += ["", f"Where the batch-1 time goes (sum of per-layer times, ms, {c['size']} px):", "",
            "| | conv | Linear | other (ReLU, pool, dropout) | total |", "|---|---|---|---|---|",
            f"| unpruned | {u['conv_ms']:.1f} | {u['linear_ms']:.1f} | {u['other_ms']:.1f} | {tot(u):.1f} |",
            f"| after 2,560 filters | {q['conv_ms']:.1f} | {q['linear_ms']:.1f} | {q['other_ms']:.1f} | {tot(q):.1f} |",
            f"| ratio | {bd['conv_time_ratio']:.2f}x (conv MACs {bd['conv_mac_ratio']:.2f}x) | "
            f"{u['linear_ms'] / q['linear_ms']:.2f}x | {u['other_ms'] / q['other_ms']:.2f}x | {tot(u) / tot(q):.2f}x |",
            "",
            f"The convolutions themselves speed up {bd['conv_time_ratio'] / bd['conv_mac_ratio']:.2f} of their MAC "
            f"ratio; the parts that pruning shrinks less (Linear layers: {u['linear_ms']:.0f} -> {q['linear_ms']:.0f} "
            f"ms; ReLU/pooling: {u['other_ms']:.0f} -> {q['other_ms']:.0f} ms) take "
            f"{(u['linear_ms'] + u['other_ms']) / tot(u):.0%} of the time before and "
            f"{(q['linear_ms'] + q['other_ms']) / tot(q):.0%} after, and cap the whole network's speed-up (Amdahl)."]
    if c["size"] < 224:
        out.append(f"(At {c['size']} px the conv layers do little work, so the FC layers and per-layer overheads "
                   "weigh more than at 224 px: compare with the full form, not with the blog post.)")
    out += ["", "| ranking cost (same batches) | CPU s | vs training pass |", "|---|---|---|",
            f"| training pass (fwd + bwd + SGD step, all layers) | {rk['train_pass_s']:.2f} | 1.00x |",
            f"| Taylor ranking, weight gradients skipped (default) | {rk['rank_pass_s']:.2f} | {rk['ratio']:.2f}x |",
            f"| Taylor ranking, criterion as is | {rk['rank_pass_weight_grads_s']:.2f} | "
            f"{rk['ratio_weight_grads']:.2f}x |", "",
            f"Target: a ranking pass at most 1.3x a training pass -- "
            f"{'met' if rk['ratio'] <= 1.3 else 'missed'} ({rk['images']} images at {rk['size']} px, one thread). "
            f"Benchmark wall time {res['seconds']:.1f} s."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m bench.vgg16_speed [--quick]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64-px inputs, 2 repeats (< 30 s)")
    args = ap.parse_args(argv)
    print(run(quick=args.quick)["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
