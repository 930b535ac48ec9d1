"""A device check, ready to run (issue 18, section 5): one command, at most 8 minutes on one GPU.

::

    python bench/gpu_check.py [--device cuda|mps|cpu] [--tiny] [--out FILE] [--skip-smoke]
                              [--smoke-only 00,04] [--smoke-timeout SECONDS]

It does three things on the device and writes them to ``bench/GPU.md`` (``--out``), naming the
device:

(a) **Smoke paper paths.** ``python -m pruninglib.run --smoke`` for every lesson, on this device,
    on stand-in data written in the real on-disk formats by ``tests/standins`` (``write_all(root)``)
    into a temporary folder -- so it works on a GPU machine without internet. Each lesson's status
    and time come from the runner's ``summary.json``.
(b) **Training throughput** (images/s) of CIFAR VGG-16 and ResNet-56 (32 px, :mod:`pruninglib.models`)
    and torchvision VGG16 at 224 px, through :func:`pruninglib.train.train_epoch` on random batches
    already on the device: fp32 against bf16 autocast + ``channels_last`` (:mod:`pruninglib.accel`),
    the other switches (``cudnn.benchmark``, ...) the same in both arms. The two arms are timed in
    interleaved rounds in this one process; the ratio of the medians is the number to quote.
(c) **Latency** of VGG16 (224 px) against a copy with half the filters of every conv removed
    (uniform L1, :func:`bench.common.uniform_filter_plan`), batch 1 and 64, fp32 and bf16, in
    interleaved rounds (:func:`pruninglib.core.metrics.interleaved_latency`).

``--device cpu --tiny`` runs a tiny form (narrow models, small images, a couple of steps, only the
smoke dry run ``--list``) on the CPU in well under a minute: ``tests/test_gpu_check.py`` runs it, so
this script cannot rot. Its numbers are labelled as tiny and are not results. The exit status is 1
when a smoke run failed or a measurement raised, else 0.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/gpu_check.py`` puts bench/ first, not the repository
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from bench.common import fmt_latency, md_table, pruned_copy, uniform_filter_plan  # noqa: E402
from pruninglib import accel  # noqa: E402
from pruninglib.core.metrics import count_macs, interleaved_latency  # noqa: E402
from pruninglib.models import build_model  # noqa: E402
from pruninglib.train import train_epoch  # noqa: E402
from pruninglib.utils import describe_device, set_seed  # noqa: E402

__all__ = ["main", "run_smoke", "throughput", "latency", "write_report", "BUDGET_S"]

#: The whole check must fit in this many seconds on one GPU (issue 18).
BUDGET_S = 8 * 60


# ------------------------------------------------------------------------------ (a) smoke


def _standins(root: Path) -> tuple[dict[str, str], str]:
    """Write the stand-in datasets into ``root`` (``tests.standins.write_all``); the environment
    that points a smoke run at them (``tests.standins.env``) and a note on what was written."""
    try:
        from tests import standins  # noqa: PLC0415
        write_all = standins.write_all
    except (ImportError, AttributeError) as e:
        raise LookupError(f"tests/standins (write_all) is not importable ({e}): the smoke runs need its stand-in "
                          "data on a machine without internet") from e
    written = list(write_all(root))
    env = {k: str(v) for k, v in standins.env(root).items()} if hasattr(standins, "env") else {}
    env.setdefault("PRUNINGLIB_DATA", str(root))
    return env, f"{len(written)} stand-ins written by tests.standins.write_all (smoke inputs, not data)"


def run_smoke(device: str, out_dir: Path, only: str | None = None, timeout_s: float = 330.0,
              dry_run: bool = False) -> dict[str, Any]:
    """Run ``python -m pruninglib.run --smoke`` (every lesson, or ``only``) on ``device``.

    Returns ``{"rows": [{"lesson", "status", "seconds", "error"}], "note": str, "ok": bool}``.
    ``dry_run`` only lists the lessons and their parameters (``--list``): what the tiny form does.
    """
    data_root = out_dir / "standins"
    data_root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    extra, note = {}, "no data needed"
    if not dry_run:
        try:
            extra, note = _standins(data_root)
        except LookupError as e:
            note = f"no stand-ins: {e}"
    env.update(extra)
    env.update(PRUNINGLIB_DEVICE=device, PRUNINGLIB_OFFLINE="1", PRUNINGLIB_STATIC="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    runs = out_dir / "runs"
    cmd = [sys.executable, "-m", "pruninglib.run", "--smoke", "--out", str(runs)]
    if only:
        cmd += ["--only", only]
    if dry_run:
        cmd.append("--list")
    elif device != "cpu":
        cmd += ["--jobs", str(max(1, min(4, (os.cpu_count() or 1) // 4)))]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    seconds = time.perf_counter() - t0
    shown = " ".join(cmd[1:]).replace(str(runs), "<tmp>/runs")
    if dry_run:  # one line per lesson: "<notebook>: MODE = ..., SMOKE = False, ..."
        listed = [ln.split(": ", 1) for ln in text.splitlines() if ": " in ln and not ln.startswith(" ")]
        rows = [{"lesson": name, "status": "declares SMOKE" if "SMOKE" in params else "NO SMOKE PARAMETER",
                 "seconds": None, "error": ""} for name, params in listed]
        ok = rc == 0 and bool(rows) and all(r["status"] == "declares SMOKE" for r in rows)
        missing = [r["lesson"] for r in rows if r["status"] != "declares SMOKE"]
        why = (f"exit status {rc}: {text.strip()[-300:]}" if rc != 0 else
               "no lessons listed" if not rows else f"no SMOKE parameter in {', '.join(missing)}")
        return {"rows": rows, "ok": ok, "seconds": seconds, "command": shown,
                "note": (f"Dry run only (`{shown}`, the tiny form): every lesson must declare SMOKE; the smoke runs "
                         "themselves are tests/test_paper_smoke.py on the CPU" + ("" if ok else f". FAILED: {why}"))}
    rows: list[dict[str, Any]] = []
    summary = runs / "summary.json"
    if summary.is_file():
        for r in json.loads(summary.read_text()):
            rows.append({"lesson": r.get("notebook"), "status": r.get("status"), "seconds": r.get("seconds"),
                         "error": (r.get("error") or "")[:160]})
    ok = rc == 0 and bool(rows) and all(r["status"] == "ok" for r in rows)
    why = ("timed out after %.0f s" % timeout_s if rc is None else f"exit status {rc}")
    note = f"`{shown}` on {device}, {note}; {seconds:.0f} s in all ({why})"
    if not ok and not rows:
        note += f". Output: {text.strip()[-600:]}"
    return {"rows": rows, "ok": ok, "seconds": seconds, "command": shown, "note": note}


# -------------------------------------------------------------------------- (b) throughput


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _tiny_vgg16(num_classes: int = 10) -> nn.Module:
    """torchvision's VGG16 layout (``VGG`` class, the 13 convs of config "D", ``AdaptiveAvgPool2d(7)``,
    three Linears) with every width divided by 8: the same code paths as VGG16 at a 64th of the
    conv work, for the tiny CPU form only."""
    from torchvision.models.vgg import VGG, cfgs, make_layers  # noqa: PLC0415

    class _TinyVGG16(VGG):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.features = make_layers([v if v == "M" else v // 8 for v in cfgs["D"]], batch_norm=False)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, num_classes))

    return _TinyVGG16()


def _models(tiny: bool) -> list[tuple[str, Callable[[], nn.Module], int, int, int]]:
    """``(label, build, image side, batch, classes)`` of the throughput models."""
    if tiny:
        return [("CIFAR VGG-16 (tiny: width 1/8)", lambda: build_model("cifar_vgg", cfg="vgg16", width=0.125), 16, 4, 10),
                ("ResNet-56 (tiny: ResNet-20, widths 4-8-16)", lambda: build_model("resnet20", widths=(4, 8, 16)), 16, 4, 10),
                ("VGG16 (tiny: widths 1/8, 32 px)", lambda: _tiny_vgg16(10), 32, 2, 10)]
    return [("CIFAR VGG-16", lambda: build_model("cifar_vgg", cfg="vgg16"), 32, 256, 10),
            ("ResNet-56", lambda: build_model("resnet56"), 32, 256, 10),
            ("VGG16 (torchvision)", lambda: build_model("vgg16"), 224, 64, 1000)]


def _arms(device: torch.device, tf32: bool = False) -> dict[str, accel.AccelPolicy]:
    """fp32 (IEEE, as paper mode keeps it outside autocast) and bf16 + channels_last, the other
    switches as paper mode sets them on this device; with ``tf32`` (CUDA) also fp32 with TF32."""
    base = accel.policy_for("paper", device, env={}, reason="gpu_check")
    arms = {"fp32": dataclasses.replace(base, autocast=False, channels_last=False, tf32=base.tf32),
            "bf16+channels_last": dataclasses.replace(base, autocast=True, dtype=torch.bfloat16, channels_last=True)}
    if tf32 and device.type == "cuda":
        arms["tf32"] = dataclasses.replace(base, autocast=False, channels_last=False, tf32=True)
    return arms


def throughput(device: torch.device, tiny: bool, rounds: int | None = None, steps: int | None = None
               ) -> list[dict[str, Any]]:
    """Training images/s of each model in each arm, interleaved; one row per model."""
    rounds = rounds or (1 if tiny else 5)
    steps = steps or (1 if tiny else 5)
    rows = []
    for label, build, side, batch, classes in _models(tiny):
        set_seed(0)
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(batch, 3, side, side, generator=g).to(device),
                 torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(steps)]
        arms = _arms(device, tf32=True)
        nets, opts = {}, {}
        proto = build()
        for name, pol in arms.items():
            nets[name] = copy.deepcopy(proto).to(device)
            accel.prepare_model(nets[name], pol)
            opts[name] = torch.optim.SGD(nets[name].parameters(), lr=1e-3, momentum=0.9)
        del proto
        times: dict[str, list[float]] = {k: [] for k in arms}
        try:
            for r in range(rounds + 1):  # round 0 warms up (cudnn.benchmark autotunes there)
                for name, pol in arms.items():
                    with accel.use_policy(pol):
                        _sync(device)
                        t0 = time.perf_counter()
                        train_epoch(nets[name], data, opts[name], policy=pol, progress=False)
                        _sync(device)
                        if r:
                            times[name].append(time.perf_counter() - t0)
            row: dict[str, Any] = {"model": label, "input": f"{side} px", "batch": batch}
            rate = {k: batch * steps / statistics.median(v) for k, v in times.items()}
            row.update({f"{k} img/s": v for k, v in rate.items()})
            row["ratio"] = rate["bf16+channels_last"] / rate["fp32"]
            row.setdefault("tf32 img/s", "-")
        except Exception as e:  # noqa: BLE001 (one model failing must not hide the others)
            row = {"model": label, "input": f"{side} px", "batch": batch, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        del nets, opts, data
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- (c) latency


class _Autocast(nn.Module):
    """``model`` run under the policy's autocast (so a latency timer sees the bf16 forward)."""

    def __init__(self, model: nn.Module, policy: accel.AccelPolicy) -> None:
        super().__init__()
        self.model, self.policy = model, policy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with accel.autocast(self.policy):
            return self.model(x)


def latency(device: torch.device, tiny: bool, fraction: float = 0.5) -> dict[str, Any]:
    """Unpruned vs pruned VGG16, batch 1 and 64 (tiny: 1 and 4), fp32 and bf16+channels_last."""
    set_seed(0)
    side, batches = (32, (1, 2)) if tiny else (224, (1, 64))
    base = (_tiny_vgg16(10) if tiny else build_model("vgg16")).eval()
    plan = uniform_filter_plan(base, fraction)
    pruned = pruned_copy(base, plan).eval()
    example_cpu = torch.randn(1, 3, side, side)
    macs = (count_macs(base, example=example_cpu), count_macs(pruned, example=example_cpu))
    rows = []
    for name, pol in _arms(device).items():
        models = {}
        for label, m in (("unpruned", base), ("pruned", pruned)):
            mm = accel.prepare_model(copy.deepcopy(m).to(device), pol)
            models[label] = _Autocast(mm, pol)
        with accel.use_policy(pol):
            for b in batches:
                x = accel.to_device(torch.randn(b, 3, side, side), device, pol)
                try:
                    res = interleaved_latency(models, x, rounds=1 if tiny else 5, repeats=1 if tiny else 3,
                                              warmup=1 if tiny else 3)
                    rows.append({"precision": name, "batch": b, "unpruned ms": fmt_latency(res["unpruned"]),
                                 "pruned ms": fmt_latency(res["pruned"]),
                                 "speed-up": res["unpruned"].median_s / res["pruned"].median_s})
                except Exception as e:  # noqa: BLE001
                    rows.append({"precision": name, "batch": b, "error": f"{type(e).__name__}: {e}"})
        del models
    filters = sum(len(v) for v in plan.values())
    return {"rows": rows, "mac_ratio": macs[0] / macs[1], "filters_removed": filters, "side": side,
            "model": "VGG16 (tiny: widths 1/8, 32 px)" if tiny else "torchvision VGG16, 224 px"}


# ------------------------------------------------------------------------------ report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor})"
    return describe_device(device)


def write_report(path: Path, device: torch.device, tiny: bool, smoke: dict | None, thr: list[dict] | None,
                 lat: dict | None, seconds: float, errors: Sequence[str], argv: Sequence[str]) -> Path:
    """Write the Markdown report (atomically: a temporary file, then a rename)."""
    lines = ["# GPU check" + (" (TINY FORM: a test of the script, not results)" if tiny else ""), "",
             f"**Device:** {_device_name(device)}  ", f"**Run:** {describe_device(device)}, "
             f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}, {seconds:.0f} s in all  ",
             f"**Command:** `python bench/gpu_check.py {' '.join(argv)}`  ",
             f"**Paper-mode switches here:** {accel.policy_for('paper', device, env={}).describe()}", ""]
    lines += ["## (a) Smoke paper paths", ""]
    if smoke is None:
        lines += ["skipped (--skip-smoke)", ""]
    else:
        lines += [smoke["note"], ""]
        if smoke["rows"]:
            lines += [md_table(["lesson", "status", "seconds", "error"],
                               [(r["lesson"], r["status"], "-" if r["seconds"] is None else round(r["seconds"], 1),
                                 r["error"] or "") for r in smoke["rows"]]), ""]
    lines += ["## (b) Training throughput: fp32 vs bf16 autocast + channels_last", "",
              "Images per second of `pruninglib.train.train_epoch` (forward, loss, backward, SGD step, and the "
              "loop's `.item()` per batch) on random batches already on the device; the arms alternate in "
              "each round (one warm-up round first), the median round is quoted; ratio = bf16 / fp32. fp32 is "
              "IEEE fp32 (TF32 off, as paper mode keeps the maths outside autocast); on CUDA the tf32 column is "
              "fp32 with TF32 tensor cores (PyTorch's default for convolutions), for reference.", ""]
    if thr:
        heads = ["model", "input", "batch", "fp32 img/s", "bf16+channels_last img/s", "ratio", "tf32 img/s", "error"]
        lines += [md_table(heads, [[r.get(h, "") for h in heads] for r in thr]), ""]
    else:
        lines += ["not measured", ""]
    lines += ["## (c) Latency: pruned vs unpruned VGG16", ""]
    if lat:
        lines += [f"{lat['model']}; pruned: {lat['filters_removed']:,} filters removed (half of every conv, "
                  f"uniform L1), MAC ratio {lat['mac_ratio']:.2f}x (the limit of the speed-up). Median "
                  "[min, max] ms per forward pass, eval mode, no gradients, the two models interleaved.", "",
                  md_table(["precision", "batch", "unpruned ms", "pruned ms", "speed-up", "error"],
                           [[r.get(h, "") for h in ("precision", "batch", "unpruned ms", "pruned ms", "speed-up",
                                                     "error")] for r in lat["rows"]]), ""]
    else:
        lines += ["not measured", ""]
    if errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: what pruninglib picks)")
    p.add_argument("--tiny", action="store_true", help="tiny models and inputs, smoke dry run only (tests, CPU)")
    p.add_argument("--out", default=None, help="report file (default bench/GPU.md; --tiny: <tmp>/gpu-check-tiny/GPU.md)")
    p.add_argument("--skip-smoke", action="store_true", help="skip (a), the smoke paper paths")
    p.add_argument("--smoke-only", default=None, metavar="00,04", help="smoke-run only these lessons")
    p.add_argument("--smoke-timeout", type=float, default=330.0, help="seconds for all smoke runs (default 330)")
    args = p.parse_args(argv)
    from pruninglib.utils import get_device

    try:
        device = get_device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        print(f"error: device {args.device!r} is not usable here ({e}); try --device cpu", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "gpu-check-tiny" / "GPU.md" if args.tiny
                                           else ROOT / "bench" / "GPU.md")
    t0 = time.perf_counter()
    errors: list[str] = []
    smoke = thr = lat = None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if not args.skip_smoke:
            smoke = run_smoke(device.type, Path(tmp), args.smoke_only, args.smoke_timeout,
                              dry_run=args.tiny and args.smoke_only is None)
            if not smoke["ok"]:
                errors.append("smoke: " + smoke["note"][:300])
            print(smoke["note"], flush=True)
    for name, fn in (("throughput", lambda: throughput(device, args.tiny)), ("latency", lambda: latency(device, args.tiny))):
        try:
            res = fn()
            if name == "throughput":
                thr = res
                errors += [f"throughput {r['model']}: {r['error']}" for r in res if "error" in r]
            else:
                lat = res
                errors += [f"latency {r['precision']} batch {r['batch']}: {r['error']}" for r in res["rows"] if "error" in r]
            print(f"{name}: done ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        except Exception as e:  # noqa: BLE001 (write what we have)
            errors.append(f"{name}: {type(e).__name__}: {e}")
            traceback.print_exc()
    seconds = time.perf_counter() - t0
    if not args.tiny and seconds > BUDGET_S:
        errors.append(f"took {seconds:.0f} s, over the {BUDGET_S} s budget")
    path = write_report(out, device, args.tiny, smoke, thr, lat, seconds, errors, argv)
    print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
