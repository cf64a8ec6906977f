"""Measurements as people read them: the text table of one report, the markdown table of a sweep."""

from __future__ import annotations


def format_report(report: dict) -> str:
    """A short human-readable table of a `measure` report."""
    config = report["model"]
    name = f"{config['name']} width {config['width_mult']:g}" if isinstance(config, dict) else str(config)
    env = report["environment"]
    lines = [f"{name} at {report['resolution']}x{report['resolution']}, batch {report['batch']}, "
             f"{env['threads']} threads, {report['iterations']} timed calls per runtime in interleaved rounds; "
             f"{env['cpu']}, "
             f"torch {env['versions']['torch']}, onnxruntime {env['versions'].get('onnxruntime', 'not installed')}",
             f"{'runtime':<24} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'images/s':>10} {'vs eager':>9} "
             f"{'of bound':>9}"]
    for row in report["results"]:
        ratio = f"{row['latency_vs_eager']:.3f}x" if "latency_vs_eager" in row else "-"
        share = f"{100 * row['of_compute_bound']:.0f}%" if "of_compute_bound" in row else "-"
        name = f"auto: {row['chosen']}" if "chosen" in row else row["runtime"]
        lines.append(f"{name:<24} {row['median_ms']:>10.2f} {row['p10_ms']:>9.2f} {row['p90_ms']:>9.2f} "
                     f"{row['images_per_s']:>10.1f} {ratio:>9} {share:>9}")
    for row in report["skipped"]:
        lines.append(f"{row['runtime']:<24} skipped: {row['reason']}")
    bound = report.get("compute_bound")
    if bound:
        lines.append(f"compute-bound limit (fp32): {bound['limit_ms']:.2f} ms = {bound['flops'] / 1e9:.2f} GFLOP at "
                     f"{bound['matmul_gflops']:.0f} GFLOP/s, the fp32 matrix multiply measured in this run")
    return "\n".join(lines)


def fastest(row: dict) -> tuple[str, float] | None:
    """The fastest runtime of one sweep row (or `measure` report) and its median ms."""
    best = min(row["results"], key=lambda r: r["median_ms"], default=None)
    return (best["runtime"], best["median_ms"]) if best else None


def sweep_table(result: dict) -> str:
    """The sweep as a markdown table: one row per model, median ms per runtime and the fp32
    compute-bound limit."""
    runtimes = list(dict.fromkeys(r["runtime"] for row in result["rows"] for r in row["results"]))
    head = ("| model | million mult-adds | million params | " + " | ".join(f"{b} ms" for b in runtimes)
            + " | fastest | fp32 compute bound ms |")
    lines = [head, "|" + " --- |" * (5 + len(runtimes))]
    for row in result["rows"]:
        times = {r["runtime"]: r["median_ms"] for r in row["results"]}
        cells = " | ".join(f"{times[b]:.2f}" if b in times else "-" for b in runtimes)
        best = fastest(row)
        lines.append(f"| {row['width']:g}-{row['resolution']} | {row['macs'] / 1e6:.0f} | {row['params'] / 1e6:.2f} "
                     f"| {cells} | {f'{best[0]} {best[1]:.2f}' if best else '-'} "
                     f"| {row['compute_bound']['limit_ms']:.2f} |")
    return "\n".join(lines)


