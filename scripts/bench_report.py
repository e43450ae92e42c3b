#!/usr/bin/env python3
"""Turns a scripts/bench result directory into BENCHMARKS.md and a latency SVG.

usage: bench_report.py RESULT_DIR OUT_MD OUT_SVG

Every figure comes from the chat-loadgen JSON lines in RESULT_DIR; the analysis text (what bounds
each figure) is kept by hand in docs/bench/analysis.md and included as it is. Cluster runs
(scripts/bench-cluster: cluster-NAME.json plus cluster-NAME.cpu.json, the CPU seconds each
process group used) get their own section, with docs/bench/cluster-analysis.md after it, and
docs/bench/sdk.md (one SDK client, measured by hand) closes the file.
"""
import json
import math
import os
import platform
import sys
from pathlib import Path

TARGETS = {
    "idle-1to1": "<= 8 KiB server RSS per session (one connection each)",
    "idle-shared": "100,000 sessions, <= 8 KiB server RSS per session",
    "direct-max": ">= 50,000 acked durable messages/s",
    "direct-10k": "p99 <= 5 ms send->receive at 10,000 msgs/s",
    "group-100x100": ">= 200,000 deliveries/s",
    "group-1x1000": ">= 200,000 deliveries/s",
    "resume-10k": "10,000 missed messages in < 1 s",
    "mixed": "steady under a day-peak mix",
}
CLUSTER_TARGETS = {
    "direct-10k": "steady 10,000 msgs/s, p99 <= 25 ms send->receive",
}
CLUSTER_ORDER = ["direct-1k", "direct-2k", "direct-5k", "direct-10k", "direct-max", "group-1x1000"]
ORDER = ["idle-1to1", "idle-shared", "direct-max", "direct-10k", "group-100x100", "group-1x1000", "resume-10k", "mixed"]


def load(result_dir):
    runs = {}
    for name in ORDER:
        path = result_dir / f"{name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text().strip() or "{}")
        except json.JSONDecodeError as e:
            data = {"error": f"unparseable output: {e}"}
        cmd = (result_dir / f"{name}.cmd").read_text().strip() if (result_dir / f"{name}.cmd").exists() else ""
        runs[name] = (data, cmd)
    return runs


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = round(v, 1)
    if isinstance(v, (int, float)) and abs(v) >= 10000:
        return f"{v:,.0f}{unit}"
    return f"{v}{unit}"


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f}"


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem} RAM, {platform.system()} {platform.release()}"


def headline(name, d):
    lat = d.get("latency_us") or {}
    if name.startswith("idle"):
        per = d.get("rss_per_session_bytes")
        opened = d.get("sessions_open", d.get("sessions_opened"))
        return f"{fmt(opened)} sessions; server RSS/session {fmt(per and per / 1024)} KiB"
    if name.startswith("resume"):
        us = d.get("resume_us")
        return f"{fmt(d.get('replayed'))} replayed in {ms(us)} ms"
    parts = [f"{fmt(d.get('acked_per_sec'))} acked/s", f"{fmt(d.get('deliveries_per_sec'))} deliveries/s"]
    if lat:
        parts.append(f"p50 {ms(lat.get('p50'))} / p99 {ms(lat.get('p99'))} / max {ms(lat.get('max'))} ms")
    return "; ".join(parts)


def svg(runs, out):
    """Latency percentiles per scenario, log scale, as grouped bars."""
    pcts = [("p50", "#4c78a8"), ("p90", "#72b7b2"), ("p99", "#f58518"), ("p999", "#e45756")]
    rows = [(n, d.get("latency_us") or {}) for n, (d, _) in runs.items() if not n.startswith("idle")]
    rows = [(n, l) for n, l in rows if l.get("count")]
    width, height, left, bottom, top = 760, 360, 70, 70, 40
    plot_w, plot_h = width - left - 20, height - top - bottom
    lo, hi = 1.0, 1.0
    for _, l in rows:
        for p, _ in pcts:
            if l.get(p):
                hi = max(hi, l[p] / 1000)
                lo = min(lo, max(l[p] / 1000, 0.01))
    lo = 10 ** math.floor(math.log10(lo))
    hi = 10 ** math.ceil(math.log10(hi))

    def y(v):
        v = max(v, lo)
        return top + plot_h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width/2}" y="20" text-anchor="middle" font-size="14">chatd send→receive latency (ms, log scale)</text>']
    decade = lo
    while decade <= hi * 1.0001:
        yy = y(decade)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{width-20}" y2="{yy:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left-6}" y="{yy+4:.1f}" text-anchor="end">{decade:g}</text>')
        decade *= 10
    group_w = plot_w / max(len(rows), 1)
    bar_w = group_w / (len(pcts) + 1)
    for i, (name, l) in enumerate(rows):
        x0 = left + i * group_w + bar_w / 2
        for j, (p, color) in enumerate(pcts):
            v = (l.get(p) or 0) / 1000
            if v <= 0:
                continue
            yy = y(v)
            parts.append(f'<rect x="{x0 + j*bar_w:.1f}" y="{yy:.1f}" width="{bar_w*0.9:.1f}" height="{top+plot_h-yy:.1f}" fill="{color}"><title>{name} {p} {v:.2f} ms</title></rect>')
        parts.append(f'<text x="{left + i*group_w + group_w/2:.1f}" y="{top+plot_h+16}" text-anchor="middle">{name}</text>')
    for j, (p, color) in enumerate(pcts):
        parts.append(f'<rect x="{left + j*70}" y="{height-24}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + j*70 + 14}" y="{height-15}">{p}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")


def main():
    result_dir, out_md, out_svg = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    runs = load(result_dir)
    svg(runs, out_svg)
    lines = ["# Benchmarks", "",
             "Figures from `scripts/bench` (release build, embedded default: SQLite with",
             "`synchronous=FULL`, every ack after a durable commit). Each scenario starts a fresh",
             "`chatd`; `chat-loadgen` drives it over real gRPC `Connect` streams from the same",
             f"machine, so **server and load generator share {os.cpu_count()} cores**.", "",
             f"- Machine: {machine()}",
             f"- Results: `{result_dir}` (raw JSON per scenario)", "",
             "| scenario | target | result | server CPU % (of one core) | cross-check with /metrics | errors |",
             "|---|---|---|---|---|---|"]
    for name in ORDER:
        if name not in runs:
            continue
        d, _ = runs[name]
        if "error" in d and not d.get("scenario"):
            lines.append(f"| {name} | {TARGETS.get(name, '')} | failed: {d['error']} | | | |")
            continue
        lines.append(f"| {name} | {TARGETS.get(name, '')} | {headline(name, d)} | {fmt(d.get('server_cpu_percent'))} "
                     f"| {'ok' if d.get('cross_check_ok') else d.get('cross_check_ok', 'n/a')} | {fmt(d.get('errors_total'))} |")
    lines += ["", f"![latency]({os.path.relpath(out_svg, out_md.parent)})", "", "## Command lines", ""]
    for name in ORDER:
        if name in runs:
            lines.append(f"- `{name}`: `chat-loadgen {runs[name][1]}`")
    lines += ["", "## Latency detail (µs)", "", "| scenario | count | p50 | p90 | p99 | p99.9 | max |", "|---|---|---|---|---|---|---|"]
    for name in ORDER:
        if name not in runs:
            continue
        l = runs[name][0].get("latency_us") or {}
        if l.get("count"):
            lines.append(f"| {name} | {fmt(l.get('count'))} | {fmt(l.get('p50'))} | {fmt(l.get('p90'))} | {fmt(l.get('p99'))} | {fmt(l.get('p999'))} | {fmt(l.get('max'))} |")
    analysis = Path("docs/bench/analysis.md")
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    lines += cluster_section(result_dir)
    # One SDK client (sdk-rust/examples/bench.rs): measured by hand, kept as it is.
    sdk = Path("docs/bench/sdk.md")
    if sdk.exists():
        lines += ["", sdk.read_text().rstrip()]
    out_md.write_text("\n".join(lines) + "\n")


def cluster_section(result_dir):
    runs = {}
    for name in CLUSTER_ORDER:
        path = result_dir / f"cluster-{name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text().strip() or "{}")
        except json.JSONDecodeError as e:
            data = {"error": f"unparseable output: {e}"}
        cpu_path = result_dir / f"cluster-{name}.cpu.json"
        cpu = json.loads(cpu_path.read_text()) if cpu_path.exists() else {}
        runs[name] = (data, cpu)
    analysis = Path("docs/bench/cluster-analysis.md")
    if not runs:
        if not analysis.exists():
            return []
        return ["", "## Cluster: two nodes on PostgreSQL, Redis and Kafka", "",
                "No `scripts/bench-cluster` results in this directory yet; the figures below were",
                "taken by hand with the same load generator.", "", analysis.read_text().rstrip()]
    lines = ["", "## Cluster: two nodes on PostgreSQL, Redis and Kafka", "",
             "Figures from `scripts/bench-cluster` (release build): two `chatd` nodes, PostgreSQL",
             "(`synchronous_commit=on`), Redis, a single Kafka broker (KRaft, JVM) and the load",
             f"generator, **all on the same {os.cpu_count()} cores**. Connections are spread over both",
             "nodes, so most messages are committed on one node and delivered by the other",
             "(outbox → Kafka → fan-out → Redis `node.{id}` → session).", "",
             "| scenario | target | result | ack p50 / p99 ms | cross-check | errors | CPU s during the run (chatd / postgres / kafka / redis) |",
             "|---|---|---|---|---|---|---|"]
    for name, (d, cpu) in runs.items():
        if "error" in d and not d.get("scenario"):
            lines.append(f"| {name} | {CLUSTER_TARGETS.get(name, '')} | failed: {d['error']} | | | | |")
            continue
        ack = d.get("ack_latency_us") or {}
        cpu_text = " / ".join(fmt(cpu.get(k)) for k in ("chatd", "postgres", "kafka", "redis")) if cpu else "n/a"
        lines.append(f"| {name} | {CLUSTER_TARGETS.get(name, '')} | {headline(name, d)} | {ms(ack.get('p50'))} / {ms(ack.get('p99'))} "
                     f"| {'ok' if d.get('cross_check_ok') else d.get('cross_check_ok', 'n/a')} | {fmt(d.get('errors_total'))} | {cpu_text} |")
    lines += ["", "| scenario | delivery latency count | p50 | p90 | p99 | p99.9 | max (µs) |", "|---|---|---|---|---|---|---|"]
    for name, (d, _) in runs.items():
        l = d.get("latency_us") or {}
        if l.get("count"):
            lines.append(f"| {name} | {fmt(l.get('count'))} | {fmt(l.get('p50'))} | {fmt(l.get('p90'))} | {fmt(l.get('p99'))} | {fmt(l.get('p999'))} | {fmt(l.get('max'))} |")
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    return lines


if __name__ == "__main__":
    main()
