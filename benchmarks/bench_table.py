"""Render a `ragsoup bench --out DIR` results.json as the markdown table of docs/results.md.

    python benchmarks/bench_table.py docs/results/bench-needle-k256/results.json
"""

from __future__ import annotations

import json
import sys


def fmt(v, spec: str = "{:.1f}") -> str:
    """A number, or blank."""
    return "" if v is None else spec.format(v)


def main(path: str) -> None:
    """Print the table, then the k = max comparison line."""
    data = json.load(open(path))
    print("| mode | k | queries | EM | recall@k | p50 ms | p95 ms | retrieve | read + soup | encode | decode "
          "| state read | mem growth MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["rows"]:
        st = r["stages_ms_p50"]
        mib = r["state_bytes_read"] / (1 << 20)
        mode = r["mode"] if r["mode"] != "soup" else f"soup, {r.get('weights') or 'uniform'}"
        print(f"| {mode} | {r['k']} | {r['n_queries']} | {r['em']:.0f} | {r['recall_at_k']:.0f} "
              f"| {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {fmt(st.get('retrieve'))} "
              f"| {fmt(st.get('load_soup'))} | {fmt(st.get('encode'))} | {fmt(st.get('decode'))} "
              f"| {mib:.1f} MiB | {fmt(r['peak_mem_growth_mb'], '{:.0f}')} |")
    k = max(r["k"] for r in data["rows"])
    soup = next(r for r in data["rows"] if r["mode"] == "soup" and r["k"] == k)  # the first weighting run
    concat = next((r for r in data["rows"] if r["mode"] == "concat" and r["k"] == k), None)
    print(f"\nbandwidth {data['bandwidth_gbps']:.1f} GB/s; k={k}: read+soup {soup['load_soup_ms_p50']:.2f} ms vs "
          f"bound {soup['bandwidth_bound_ms']:.2f} ms ({soup['load_soup_ms_p50'] / soup['bandwidth_bound_ms']:.2f}x)")
    if concat:
        print(f"k={k}: concat {concat['latency_ms_p50']:.1f} ms / soup {soup['latency_ms_p50']:.1f} ms = "
              f"{concat['latency_ms_p50'] / soup['latency_ms_p50']:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1])
