"""Print a Markdown report of a pytest-benchmark JSON file: means, side-by-side ratios, targets.

    python benchmarks/report.py benchmarks/results/cpu.json            # Markdown to stdout
    python benchmarks/report.py benchmarks/results/cpu.json --check    # exit 1 if a target is missed

Reads what ``python -m pytest benchmarks --benchmark-json=FILE`` writes (a file saved with
``--benchmark-save`` works too). Each benchmark's ``extra_info`` (see benchmarks/_bench.py)
holds its time ratio against a named reference measured in the same rounds (``ratio``,
``ratio_vs``), the target as the largest ratio that meets it (``target_max_ratio``) and peak
memory (``peak_mem_mb``). Ratios are time ratios: 0.5 means the benchmark takes half the
reference's time (2.00x faster). The epoch race (``extra_info["race"]``, test_epoch_race.py)
gets a second table under the first: each side's epoch and whole-run times, dev scores and
computed against real tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def _name(bench: dict[str, Any]) -> str:
    name = re.sub(r"^test_", "", bench["name"])
    device = (bench.get("params") or {}).get("device")
    if device:
        name = re.sub(rf"\[{device}-?", "[", name).replace("[]", "")
    return name


def _memory(extra: dict[str, Any]) -> str:
    if "peak_mem_mb" not in extra:
        return ""
    text = f"{extra['peak_mem_mb']:.0f} MiB"
    if "reference_peak_mem_mb" in extra:
        text += f" (ref {extra['reference_peak_mem_mb']:.0f})"
    return text


def target_cell(extra: dict[str, Any]) -> tuple[str, str]:
    """(target, verdict) cells: verdict says by how much a missed target misses."""
    limit = extra.get("target_max_ratio")
    if limit is None:
        return "", ""
    ratio = extra["ratio"]
    target = f"≤ {limit:g}"
    if ratio <= limit:
        return target, "met"
    return target, f"**missed** ({(ratio / limit - 1) * 100:.0f}% over)"


def machine_lines(data: dict[str, Any]) -> list[str]:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    versions = info.get("versions", {})
    cuda = info.get("cuda")
    lines = [
        f"- date: {data.get('datetime', '?')}; mtbert commit {info.get('mtbert_commit') or data.get('commit_info', {}).get('id', '?')}",
        f"- CPU: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores, torch threads {info.get('torch_threads', '?')}"
        f" ({info.get('cpu_capability', '?')})",
        f"- CUDA: {cuda['device']} (CUDA {cuda['cuda']})" if cuda else "- CUDA: none",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    ]
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    return lines


def report(data: dict[str, Any]) -> tuple[str, list[str]]:
    """The Markdown text and the list of missed targets."""
    out = ["## Machine", "", *machine_lines(data), "", "## Results", ""]
    out.append("| group | benchmark | device | mean | median | rounds | vs | time ratio | speed-up | target | verdict | peak memory |")
    out.append("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | ---: |")
    missed: list[str] = []
    benches = sorted(data.get("benchmarks", []), key=lambda b: (b.get("group") or "", b.get("fullname", b["name"])))
    for bench in benches:
        stats, extra = bench.get("stats", {}), bench.get("extra_info", {})
        ratio = extra.get("ratio")
        target, verdict = target_cell(extra)
        vs = extra.get("ratio_vs", "(reference)" if extra.get("role") == "reference" else "")
        if verdict.startswith("**missed"):
            missed.append(f"{bench['name']}: ratio {ratio:.2f} vs target {target}")
        out.append("| " + " | ".join([
            bench.get("group") or "",
            _name(bench),
            extra.get("device", (bench.get("params") or {}).get("device", "")),
            _seconds(stats.get("mean")),
            _seconds(stats.get("median")),
            str(stats.get("rounds", "")),
            vs,
            f"{ratio:.3f}" if ratio is not None else "",
            f"{1 / ratio:.2f}x" if ratio else "",
            target,
            verdict,
            _memory(extra),
        ]) + " |")
    methods = sorted({b.get("extra_info", {}).get("memory_method") for b in benches} - {None})
    out += ["", "Time ratio = median(benchmark) / median(reference) over the same rounds (each round times the "
            "reference just before or just after the benchmark); below 1 the benchmark is faster. Peak memory: "
            + ("; ".join(methods) if methods else "not measured") + "."]
    extras = [(b, b["extra_info"]) for b in benches if "compile_seconds" in b.get("extra_info", {})]
    for bench, extra in extras:
        payback = extra.get("payback_steps")
        out.append(f"\n`{_name(bench)}` ({extra.get('device')}): compilation took {extra['compile_seconds']:.1f} s; "
                   + (f"it pays back after about {payback:.0f} training steps." if payback else "it never pays back "
                      "(the compiled steps are not faster)."))
    for bench in benches:
        if "race" in bench.get("extra_info", {}):
            out += ["", *race_lines(bench)]
    return "\n".join(out) + "\n", missed


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def race_lines(bench: dict[str, Any]) -> list[str]:
    """The epoch race's two sides (benchmarks/test_epoch_race.py): times, dev scores, tokens."""
    extra = bench["extra_info"]
    dev_rows = extra.get("dev_rows_per_task") or {}
    rows = ", ".join(f"{task} {n}" for task, n in dev_rows.items()) if isinstance(dev_rows, dict) else dev_rows
    lines = [
        f"`{_name(bench)}` ({extra.get('device')}): {extra.get('steps')} optimizer steps of batch "
        f"{extra.get('batch_size')}, round-robin; {extra.get('train_rows_per_task')} training rows per task, "
        f"dev rows: {rows}; mtbert precision {extra.get('mtbert_precision')}; "
        f"{extra.get('paired_rounds', 1)} round(s). Time ratio {extra['ratio']:.3f} "
        f"({1 / extra['ratio']:.2f}x) of the epochs' training times (the table's mean and median: the whole "
        f"`mtbert.run()` call, start-up and evaluation included).",
        "",
        "| side | epoch training | whole run | sst acc | para acc | sts r | mean | tokens computed | real tokens | real / computed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"mtbert": "mtbert run (baseline, defaults)", "plain": "plain transformers loop (padded to 64)"}
    for side, label in names.items():
        info = extra["race"].get(side)
        if not info:
            continue
        dev = info.get("dev", {})
        efficiency = info.get("padding_efficiency")
        lines.append("| " + " | ".join([
            label, _seconds(info.get("train_s")), _seconds(info.get("wall_s")),
            _score(dev.get("sst_acc")), _score(dev.get("para_acc")), _score(dev.get("sts_pearson")), _score(dev.get("mean")),
            f"{info.get('tokens_computed', 0):,}", f"{info.get('tokens_real', 0):,}",
            f"{efficiency * 100:.1f}%" if efficiency is not None else "",
        ]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="a file written by pytest --benchmark-json")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text(encoding="utf-8"))
    text, missed = report(data)
    sys.stdout.write(text)
    if missed:
        sys.stdout.write("\nMissed targets:\n" + "".join(f"- {m}\n" for m in missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
