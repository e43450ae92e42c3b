#!/usr/bin/env python3
"""Turns a scripts/bench result directory into BENCHMARKS.md and a latency SVG.

usage: bench_report.py RESULT_DIR OUT_MD OUT_SVG
       bench_report.py --compare BASE_DIR HEAD_DIR OUT_MD BASE_LABEL

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
    "idle-1to1": "<= 12 KiB server RSS per session (one connection each)",
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
# The latency curve (curve-1k ... curve-20k): direct, open loop, server and loadgen on a core each.
CURVE_RATES = [1, 2, 5, 10, 20]
# ejabberd's send->receive p99 in the side-by-side run of issue 15 (the same external harness
# against each server, server pinned to one core and harness to the other, on this box). It
# stores nothing for online users; only these two points were published.
EJABBERD_P99_MS = {1000: 1.5, 5000: 4.7}
ORDER = ["idle-1to1", "idle-shared", "direct-max", "direct-10k", "group-100x100", "group-1x1000", "resume-10k", "mixed"]


def load(result_dir):
    runs = {}
    for name in ORDER:
        path = result_dir / f"{name}.json"
        if not path.exists():
            continue
        data = read_json(path)
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


def log_scale(lo, hi, start, length, flip=False):
    """Maps a value between lo and hi (log scale) to a pixel between start and start + length;
    flipped for a y axis, where more is higher up."""
    span = max(math.log10(hi) - math.log10(lo), 1e-9)

    def at(v):
        f = (math.log10(max(v, lo)) - math.log10(lo)) / span
        return start + ((1 - f) if flip else f) * length
    return at


def svg_start(width, height, title_x, title):
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{title_x}" y="20" text-anchor="middle" font-size="14">{title}</text>']


def decade_lines(lo, hi, y, x1, x2, unit=""):
    """A grid line and a label at each power of ten from lo to hi."""
    parts, decade = [], lo
    while decade <= hi * 1.0001:
        parts.append(f'<line x1="{x1}" y1="{y(decade):.1f}" x2="{x2}" y2="{y(decade):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{x1-6}" y="{y(decade)+4:.1f}" text-anchor="end">{decade:g}{unit}</text>')
        decade *= 10
    return parts


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

    y = log_scale(lo, hi, top, plot_h, flip=True)
    parts = svg_start(width, height, width / 2, "chatd send→receive latency (ms, log scale)")
    parts += decade_lines(lo, hi, y, left, width - 20)
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


def read_json(path):
    try:
        return json.loads(path.read_text().strip() or "{}")
    except (OSError, json.JSONDecodeError) as e:
        return {"error": f"unreadable {path.name}: {e}"}


def load_curve(result_dir):
    """[(offered msgs/s, result)] for the curve runs present, by rate."""
    points = []
    for k in CURVE_RATES:
        path = result_dir / f"curve-{k}k.json"
        if path.exists():
            points.append((k * 1000, read_json(path)))
    return points


def curve_svg(points, out):
    """p50 and p99 send->receive against offered msgs/s (both log scale), ejabberd's p99 beside."""
    width, height, left, right, top, bottom = 640, 380, 70, 150, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    rates = [r for r, _ in points] + list(EJABBERD_P99_MS)
    values = [v for _, d in points for v in ((d.get("latency_us") or {}).get("p50"), (d.get("latency_us") or {}).get("p99")) if v]
    values = [v / 1000 for v in values] + list(EJABBERD_P99_MS.values())
    x_lo, x_hi = min(rates), max(rates)
    y_lo = 10 ** math.floor(math.log10(max(min(values), 0.01)))
    y_hi = 10 ** math.ceil(math.log10(max(values)))

    x = log_scale(x_lo, x_hi, left, plot_w)
    y = log_scale(y_lo, y_hi, top, plot_h, flip=True)
    parts = svg_start(width, height, left + plot_w / 2, "send→receive latency against load (log–log)")
    parts += decade_lines(y_lo, y_hi, y, left, left + plot_w, " ms")
    for r in sorted(set(rates)):
        parts.append(f'<line x1="{x(r):.1f}" y1="{top}" x2="{x(r):.1f}" y2="{top+plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{x(r):.1f}" y="{top+plot_h+16}" text-anchor="middle">{r:,}</text>')
    parts.append(f'<text x="{left + plot_w/2}" y="{height-12}" text-anchor="middle">offered msgs/s</text>')
    series = [("chatd p50", "#4c78a8", "p50", ""), ("chatd p99", "#f58518", "p99", "")]
    legend_y = top + 10
    for label, color, key, dash in series:
        pts = [(x(r), y(d["latency_us"][key] / 1000)) for r, d in points if (d.get("latency_us") or {}).get(key)]
        if pts:
            path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(pts))
            parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in pts]
        parts.append(f'<rect x="{left+plot_w+12}" y="{legend_y-8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left+plot_w+26}" y="{legend_y+1}">{label}</text>')
        legend_y += 18
    ej = sorted(EJABBERD_P99_MS.items())
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(r):.1f},{y(v):.1f}" for i, (r, v) in enumerate(ej))
    parts.append(f'<path d="{path}" fill="none" stroke="#54a24b" stroke-width="2" stroke-dasharray="5,4"/>')
    parts += [f'<rect x="{x(r)-3:.1f}" y="{y(v)-3:.1f}" width="6" height="6" fill="#54a24b"><title>ejabberd p99 {v} ms at {r}/s</title></rect>' for r, v in ej]
    parts.append(f'<rect x="{left+plot_w+12}" y="{legend_y-8}" width="10" height="10" fill="#54a24b"/>')
    parts.append(f'<text x="{left+plot_w+26}" y="{legend_y+1}">ejabberd p99</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")


def curve_section(points, svg_path, out_md):
    if not points:
        return []
    lines = ["", "## Latency against load", "",
             "`direct`, 100 connections, open loop at each rate for 15 s after 3 s of warm-up; the server",
             "pinned to one core and the load generator to the other (`taskset`), as in the side-by-side",
             "run against ejabberd of issue 15, whose p99 is drawn beside (that run published two points;",
             "ejabberd stores nothing for an online recipient, chatd commits every message to disk first).", "",
             f"![latency against load]({os.path.relpath(svg_path, out_md.parent)})", "",
             "| offered msgs/s | acked/s | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | server CPU % | errors | ejabberd p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rate, d in points:
        l = d.get("latency_us") or {}
        lines.append(f"| {rate:,} | {fmt(d.get('acked_per_sec'))} | {fmt(d.get('deliveries_per_sec'))} | {ms(l.get('p50'))} "
                     f"| {ms(l.get('p90'))} | {ms(l.get('p99'))} | {ms(l.get('max'))} | {fmt(d.get('server_cpu_percent'))} "
                     f"| {fmt(d.get('errors_total'))} | {EJABBERD_P99_MS.get(rate, '')} |")
    return lines


# What --compare reports per scenario: (label, JSON path, unit, higher is better, the smallest
# absolute change that counts: below it a percentage of a small figure is only jitter).
COMPARED = [
    ("acked/s", ("acked_per_sec",), "", True, 0),
    ("deliveries/s", ("deliveries_per_sec",), "", True, 0),
    ("p50 ms", ("latency_us", "p50"), "ms", False, 0.5),
    ("p99 ms", ("latency_us", "p99"), "ms", False, 1.0),
    ("RSS/session KiB", ("rss_per_session_bytes",), "KiB", False, 0.5),
    ("resume ms", ("resume_us",), "ms", False, 1.0),
    ("server CPU %", ("server_cpu_percent",), "", False, 5),
    ("errors", ("errors_total",), "", False, 0),
]


def figure(d, path, unit):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    if not isinstance(d, (int, float)):
        return None
    return d / 1000 if unit == "ms" else d / 1024 if unit == "KiB" else d


def runs_by_scenario(result_dir):
    """Scenario name -> its runs' JSON, in repeat order (NAME.json, or NAME.rK.json with --repeat)."""
    out = {}
    for path in sorted(result_dir.glob("*.json")):
        stem = path.stem
        name, _, rep = stem.rpartition(".r")
        if not (name and rep.isdigit()):
            name, rep = stem, "0"
        out.setdefault(name, []).append((int(rep), read_json(path)))
    return {name: [d for _, d in sorted(runs, key=lambda r: r[0])] for name, runs in out.items()}


def median(values):
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def verdict(base, head, higher_better, floor):
    """(change text, worse?) for two lists of one figure. Worse means the medians differ by more
    than 15 % the wrong way and, with repeats, the ranges do not overlap: one noisy run on this
    VM (an fsync stall is 15 ms) must not read as a regression."""
    b, h = median(base), median(head)
    if b == 0:
        return ("", False) if h == 0 else ("new" if higher_better else "was 0", False)
    pct = (h - b) / abs(b) * 100
    bad = (pct < -15 if higher_better else pct > 15) and abs(h - b) > floor
    if bad and len(base) > 1 and len(head) > 1:
        bad = max(head) < min(base) if higher_better else min(head) > max(base)
    return f"{pct:+.0f} %" + (" **worse**" if bad else ""), bad


def spread(values):
    if len(values) < 2:
        return fmt(values[0])
    return f"{fmt(median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def compare(base_dir, head_dir, out_md, base_label):
    """One table: each scenario's figures on the base build and on this tree, and the change."""
    base_runs, head_runs = runs_by_scenario(base_dir), runs_by_scenario(head_dir)
    names = [n for n in ORDER if n in head_runs] + sorted(n for n in head_runs if n not in ORDER)
    repeats = max((len(r) for r in head_runs.values()), default=1)
    lines = [f"# scripts/bench --compare: {base_label} → this tree", "",
             "Each scenario ran on the base build, then on this tree's, on fresh servers, back to back"
             + (f", {repeats} times; figures are medians (min–max)." if repeats > 1 else "."),
             "**worse** marks a median worse by more than 15 % and by more than a small absolute floor"
             + (", whose range does not overlap the base's." if repeats > 1 else
                "; one run each, so rerun with --repeat 3 before believing one."), "",
             "| scenario | figure | base | this tree | change |", "|---|---|---|---|---|"]
    worse = 0
    for name in names:
        base, head = base_runs.get(name, []), head_runs[name]
        for label, path, unit, higher_better, floor in COMPARED:
            b = [v for v in (figure(d, path, unit) for d in base) if v is not None]
            h = [v for v in (figure(d, path, unit) for d in head) if v is not None]
            if not b and not h:
                continue
            change, bad = verdict(b, h, higher_better, floor) if b and h else ("", False)
            worse += bad
            lines.append(f"| {name} | {label} | {spread(b) if b else 'n/a'} | {spread(h) if h else 'n/a'} | {change} |")
        for side, runs in (("base", base), ("this tree", head)):
            for d in runs:
                if "error" in d and not d.get("scenario"):
                    lines.append(f"| {name} | failed on {side} | {d['error']} | | |")
    lines += ["", f"{worse} figure(s) worse."]
    out_md.write_text("\n".join(lines) + "\n")


def main():
    if sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
        return
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
    curve = load_curve(result_dir)
    if curve:
        curve_path = out_svg.with_name("latency-curve.svg")
        curve_svg(curve, curve_path)
        lines += curve_section(curve, curve_path, out_md)
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
        data = read_json(path)
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
