"""``python -m bench``: run the benchmarks and write RESULTS.md.

::

    python -m bench [--quick] [--only speedup,peers,...] [--out DIR] [--runs DIR]
                    [--threads N] [--list]

Every selected benchmark runs in this process, one after the other, on the device
:func:`pruninglib.utils.get_device` picks; ``DIR/RESULTS.md`` (default ``bench/``; with
``--quick``, ``<tmp>/pruning-bench-quick/`` so that a smoke test never overwrites the committed
results) gets one section per benchmark and ``DIR/figures/*.png`` the figures, linked from it. A benchmark of
another lesson that is missing or raises gets "not available: <reason>"; a failure of the
harness's own benchmarks (speedup, peers, collection) is written down too, and the exit
status is then 1. Bad command lines exit with 2.
"""
from __future__ import annotations

import argparse
import re
import importlib
import importlib.util
import inspect
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from bench import ALIASES, SECTIONS, SectionInfo
from bench.common import (BENCH_DIR, Section, cpu_seconds, environment, environment_markdown,
                          md_table, render_result)

__all__ = ["main", "select_sections", "run_section", "write_results"]


def select_sections(only: str | None) -> list[SectionInfo]:
    """The sections named in ``only`` (comma-separated keys or aliases), in RESULTS.md order.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if not only:
        return list(SECTIONS)
    keys = {s.key for s in SECTIONS}
    wanted, unknown = set(), []
    for tok in (t.strip() for t in only.split(",")):
        if not tok:
            continue
        key = ALIASES.get(tok, tok)
        (wanted.add(key) if key in keys else unknown.append(tok))
    if unknown or not wanted:
        raise ValueError(f"unknown section(s): {', '.join(unknown) or '(none given)'}. Valid: "
                         + ", ".join(s.key for s in SECTIONS)
                         + f" (aliases: {', '.join(f'{a}={k}' for a, k in ALIASES.items())})")
    return [s for s in SECTIONS if s.key in wanted]


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _call_run(info: SectionInfo, quick: bool, extra: dict[str, Any]) -> Any:
    """Import ``bench.<key>`` and call its ``run``; raise LookupError when it is not there."""
    name = f"bench.{info.key}"
    if importlib.util.find_spec(name) is None:
        raise LookupError(f"bench/{info.key}.py is not there (yet)")
    mod = importlib.import_module(name)
    fn = getattr(mod, "run", None)
    if not callable(fn):
        raise LookupError(f"bench/{info.key}.py has no run(quick) function")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in extra.items() if k in params}
    return fn(quick=quick, **kwargs)


def run_section(info: SectionInfo, quick: bool, fig_dir: Path,
                extra: dict[str, Any] | None = None) -> Section:
    """Run one benchmark and turn its result into a :class:`~bench.common.Section`.

    Global torch state a benchmark may change (thread count, deterministic algorithms) is
    restored afterwards, and open pyplot figures are closed.
    """
    sec = Section(info.key, info.title)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    t0, c0 = time.perf_counter(), cpu_seconds()
    print(f"[bench] {info.key} ...", flush=True)
    sec.measured = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        result = _call_run(info, quick, extra or {})
        sec.markdown, sec.figures = render_result(result, fig_dir, info.key)
    except LookupError as exc:
        sec.status = "not available"
        sec.markdown = f"not available: {exc}"
    except Exception as exc:  # a benchmark's failure must not hide the others' results
        tb = traceback.format_exc()
        if info.core:
            sec.status = "FAILED"
            sec.markdown = (f"FAILED: {_first_line(exc)}\n\n```text\n"
                            + "\n".join(tb.strip().splitlines()[-15:]) + "\n```")
            print(tb, file=sys.stderr)
        else:
            sec.status = "not available"
            sec.markdown = f"not available: {_first_line(exc)}"
            print(f"[bench] {info.key}: {_first_line(exc)}", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    sec.seconds = time.perf_counter() - t0
    sec.cpu_s = cpu_seconds() - c0
    print(f"[bench] {info.key}: {sec.status} ({sec.seconds:.1f} s wall, {sec.cpu_s:.1f} s CPU)",
          flush=True)
    return sec


def write_results(sections: Sequence[Section], out: Path, env: dict[str, Any], quick: bool,
                  argv: Sequence[str], note: str = "") -> Path:
    """Write ``out/RESULTS.md``; return its path."""
    cmd = "python -m bench" + ("".join(f" {a}" for a in argv) if argv else "")
    lines = ["# Benchmark results", "",
             f"Generated by `{cmd}` on {env['date']}, on {env['device']}. Do not edit: "
             "`make bench` rewrites this file and `figures/`.", ""]
    if note:
        lines += [note, ""]
    if quick:
        lines += ["> **Quick mode**: tiny inputs, 1-2 repeats, one thread: a smoke test that keeps "
                  "the code from rotting. Its numbers say nothing about speed.", ""]
    lines += [
        "Conventions: every latency is the median of the repeats with [min, max] beside it, taken "
        "with `pruninglib.core.metrics.measure_latency` in eval mode under `torch.no_grad`; every ratio "
        "(pruned vs unpruned, ours vs a peer) comes from models timed back to back in this one "
        "process, interleaved round by round so that load changes hit them alike. Wall times on a "
        "shared machine are inflated; ratios much less so.", "",
        "## Environment", "", environment_markdown(env), "",
        "## Contents", "",
        md_table(["section", "status", "wall s", "CPU s"],
                 [[f"[{s.title}](#{_anchor(s.title)})", s.status, round(s.seconds, 1),
                   round(s.cpu_s, 1)] for s in sections]), ""]
    for s in sections:
        lines += [f"## {s.title}", "", s.markdown.strip(), ""]
        for f in s.figures:
            lines += [f"![{Path(f).stem}](figures/{f})", ""]
        when = f", measured {s.measured}" if s.measured else ""
        lines += [f"*{s.key}: {s.status}, {s.seconds:.1f} s wall, {s.cpu_s:.1f} s CPU{when}.*", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def read_sections(path: Path) -> dict[str, Section]:
    """The sections of an existing RESULTS.md, by key (what :func:`write_results` wrote)."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    gen = re.search(r"^Generated by `[^`]*` on ([^,]+),", text, re.M)
    generated = gen.group(1) if gen else ""
    found: dict[str, Section] = {}
    for info in SECTIONS:
        head = f"\n## {info.title}\n"
        if head not in text:
            continue
        body = text.split(head, 1)[1]
        nxt = [body.find(f"\n## {o.title}\n") for o in SECTIONS if f"\n## {o.title}\n" in body]
        body = body[: min(nxt)] if nxt else body
        m = re.search(rf"\n\*{re.escape(info.key)}: ([^,]+), ([0-9.]+) s wall, ([0-9.]+) s CPU"
                      r"(?:, measured ([^*]+?))?\.\*\s*$", body)
        sec = Section(info.key, info.title, status=m.group(1) if m else "ok",
                      seconds=float(m.group(2)) if m else 0.0, cpu_s=float(m.group(3)) if m else 0.0,
                      measured=(m.group(4) or generated) if m else generated)
        body = body[: m.start()] if m else body
        sec.figures = re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\)", body)
        sec.markdown = re.sub(r"\n!\[[^\]]*\]\(figures/[^)]+\)\n", "\n", body).strip()
        found[info.key] = sec
    return found


def merge_sections(path: Path, fresh: Sequence[Section]) -> list[Section]:
    """``fresh`` sections in place of their old text in ``path``; the other old sections kept, in
    :data:`SECTIONS` order (``python -m bench --only KEY --merge``)."""
    old = read_sections(path)
    new = {s.key: s for s in fresh}
    return [new.get(i.key) or old[i.key] for i in SECTIONS if i.key in new or i.key in old]


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("::")[0].strip())
    p.add_argument("--quick", action="store_true",
                   help="tiny inputs and 1-2 repeats (a smoke test; what the unit test runs)")
    p.add_argument("--only", metavar="speedup,peers,...",
                   help="comma-separated sections: " + ", ".join(s.key for s in SECTIONS))
    p.add_argument("--out", metavar="DIR", help="where RESULTS.md and figures/ go (default bench/; "
                   "with --quick, <tmp>/pruning-bench-quick so the committed results stay)")
    p.add_argument("--runs", metavar="DIR", help="folder of `make run` outputs read by the collection "
                   "section (default <repository>/runs)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads for the whole run (default: torch's choice; 1 with --quick)")
    p.add_argument("--merge", action="store_true",
                   help="with --only: replace just those sections in the existing RESULTS.md and keep the others")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        0 when the harness's own benchmarks ran (others may be "not available"), 1 when one
        of them failed, 2 for a bad command line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        chosen = select_sections(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for s in SECTIONS:
            print(f"{s.key:16s} {s.title}{'' if s.core else '  (optional)'}")
        return 0
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1 (got {args.threads})", file=sys.stderr)
        return 2

    if args.out:
        out = Path(args.out)
    elif args.quick:  # never overwrite the committed full results with a smoke test
        out = Path(tempfile.gettempdir()) / "pruning-bench-quick"
    else:
        out = BENCH_DIR
    fig_dir = out / "figures"
    old_threads = torch.get_num_threads()
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        env = environment()
        extra = {"runs_dir": Path(args.runs)} if args.runs else {}
        sections = [run_section(s, args.quick, fig_dir, extra) for s in chosen]
        kept_note = ""
        if args.merge:
            fresh = {s.key for s in sections}
            sections = merge_sections(out / "RESULTS.md", sections)
            kept = [s.key for s in sections if s.key not in fresh]
            if kept:
                kept_note = (f"Merged (`--merge`): only {', '.join(sorted(fresh))} measured in this run; "
                             f"{', '.join(kept)} kept from the previous file; each section's last line says "
                             "when it was measured.")
        env["bench_wall_s"] = round(sum(s.seconds for s in sections), 1)
        env["bench_cpu_s"] = round(sum(s.cpu_s for s in sections), 1)
        path = write_results(sections, out, env, args.quick, argv, note=kept_note)
    finally:
        torch.set_num_threads(old_threads)
    failed = [s.key for s in sections if s.status == "FAILED"]
    print(f"[bench] wrote {path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
