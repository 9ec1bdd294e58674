#!/usr/bin/python3
"""Report of a bench/e2e/run.sh run: medians, ratios, JSON, Markdown and a PNG chart.

    report.py --samples S.jsonl --meta META.json --json OUT.json --md OUT.md [--png OUT.png]
              [--append-md bench/RESULTS.md]

Ratios compare bucketfs with each other system measured in the same run, as speed:
throughput / throughput, or time / time the other way round, so >1 always means bucketfs
did better. Standard library only; the chart needs python3-matplotlib (skipped without).
"""
import argparse
import json
import os
import platform
import statistics
import sys

MIB = 1 << 20

# workload -> (title, primary metric, unit, higher is better)
WORKLOADS = {
    "seq_read_cold": ("sequential read {big}, fresh mount", "mb_s", "MB/s", True),
    "seq_read_warm": ("sequential read {big} again, same mount", "mb_s", "MB/s", True),
    "seq_write": ("sequential write {write}, until in S3", "mb_s", "MB/s", True),
    "seq_write_signed": ("sequential write {write} by one curl PUT, SHA-256 signed and verified", "mb_s", "MB/s", True),
    "seq_write_awscli": ("sequential write {write} by `aws s3 cp` (parallel parts)", "mb_s", "MB/s", True),
    "small_files": ("{small_n} × 4 KiB files, until all in S3", "wall_s", "s", False),
    "ls_cold": ("`ls -l` of {ls_n} objects, fresh mount", "wall_s", "s", False),
    "ls_warm": ("`ls -l` of {ls_n} objects again", "wall_s", "s", False),
    "tree_cold": ("`ls -lR` of {tree_dirs} directories × {tree_files} files, fresh mount", "wall_s", "s", False),
    "rand_read": ("{rand_n} cold random 4 KiB reads, mean (p99)", "mean_ms", "ms", False),
    "fio_1j": ("fio randread 4 KiB, 1 job", "iops", "IOPS", True),
    "fio_4j": ("fio randread 4 KiB, 4 jobs", "iops", "IOPS", True),
    "ttfb": ("time to first byte, 1 MiB object, fresh mount", "ttfb_ms", "ms", False),
    "parallel_read": ("{par_n} readers × {par} in parallel", "mb_s", "MB/s", True),
}
LABELS = {"raw": "raw (curl)", "bucketfs": "bucketfs", "s3fs": "s3fs",
          "rclone-writes": "rclone writes", "rclone-full": "rclone full"}


def size_text(n):
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n / MIB:g} MiB"


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": "unknown", "ram_gib": None, "os": ""}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["ram_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return info


def fmt(v, unit=""):
    if v is None:
        return "—"
    if unit in ("IOPS", "MB/s") or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summarize(samples, systems):
    """medians[workload][system] = {"status", "n", metric: median, ...}."""
    medians = {}
    for wl in WORKLOADS:
        medians[wl] = {}
        for sys_ in systems:
            rows = [s for s in samples if s["workload"] == wl and s["system"] == sys_]
            if not rows:
                continue
            ok = [s for s in rows if s["status"] == "ok"]
            entry = {"n": len(ok), "failed": sum(s["status"] == "failed" for s in rows)}
            if ok:
                entry["status"] = "ok"
                keys = {k for s in ok for k, v in s.items() if isinstance(v, (int, float)) and k != "rep"}
                for k in sorted(keys):
                    entry[k] = statistics.median(s[k] for s in ok if k in s)
            elif any(s["status"] == "na" for s in rows):
                entry["status"] = "na"
                entry["reason"] = next(s["reason"] for s in rows if s["status"] == "na")
            else:
                entry["status"] = "failed"
                entry["error"] = next(s.get("error", "") for s in rows if s["status"] == "failed")
            medians[wl][sys_] = entry
    return medians


def ratios(medians, systems):
    """ratio[workload][other] = bucketfs speed / other's speed (>1: bucketfs better)."""
    out = {}
    for wl, (_, metric, _, higher) in WORKLOADS.items():
        out[wl] = {}
        b = medians.get(wl, {}).get("bucketfs", {})
        for other in systems:
            if other == "bucketfs":
                continue
            o = medians.get(wl, {}).get(other, {})
            bv, ov = b.get(metric), o.get(metric)
            if bv and ov:
                out[wl][other] = round(bv / ov if higher else ov / bv, 3)
            else:
                out[wl][other] = None
    return out


def cell(entry, metric, unit, wl):
    if not entry:
        return "—"
    if entry["status"] == "na":
        return "n/a"
    if entry["status"] == "failed":
        return "failed"
    text = fmt(entry.get(metric), unit)
    if wl == "rand_read" and "p99_ms" in entry:
        text += f" ({fmt(entry['p99_ms'])})"
    if entry.get("failed"):
        text += f" [{entry['failed']} failed]"
    return text


def markdown(meta, mach, medians, rat, systems, png_name):
    sizes = meta["sizes"]
    names = {"big": size_text(sizes["big_bytes"]), "write": size_text(sizes["write_bytes"]),
             "small_n": f"{sizes['small_files']:,}", "ls_n": f"{sizes['ls_entries']:,}",
             "rand_n": f"{sizes['random_reads']:,}", "par_n": sizes["parallel_readers"],
             "par": size_text(sizes["parallel_bytes_each"]),
             "tree_dirs": sizes.get("tree_dirs", "?"), "tree_files": sizes.get("tree_files", "?")}
    others = [s for s in systems if s != "bucketfs"]
    have_bucketfs = "bucketfs" in systems
    kind = "QUICK smoke run (small sizes; not a benchmark)" if meta["quick"] else f"median of {meta['reps']}"
    lines = [
        "",
        f"### End-to-end, bucketfs vs peers, {kind} — {meta['date'][:10]}",
        "",
        f"Command: `{meta['command']}`. Machine: {mach['nproc']} cores ({mach['cpu']}), "
        f"{mach['ram_gib']} GiB RAM, Linux {mach['kernel']}, {mach['os']}. "
        f"Server: {meta['server']}. "
        "Versions: " + ", ".join(dict.fromkeys(v for v in meta["versions"].values() if v)) + ".",
        "",
    ]
    head = ["workload"] + [LABELS.get(s, s) for s in systems]
    if have_bucketfs:
        head += [f"bucketfs ÷ {LABELS.get(s, s)}" for s in others]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for wl, (title, metric, unit, higher) in WORKLOADS.items():
        if not medians.get(wl):
            continue
        row = [f"{title.format(**names)} [{unit}, {'higher' if higher else 'lower'} is better]"]
        row += [cell(medians[wl].get(s), metric, unit, wl) for s in systems]
        if have_bucketfs:
            row += [f"{rat[wl][s]:.2f}" if rat[wl].get(s) else "—" for s in others]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Ratios are bucketfs's speed over the other's (throughput over throughput, or the other's "
        "time over bucketfs's): above 1 bucketfs did better. Writes are timed until the objects "
        "are visible in S3 (HEAD/List), not only until close; rclone uploads 5 s after close. "
        f"bucketfs writes: {meta.get('bucketfs_writes', 'yes')}.",
        "",
        "Resources, medians: CPU seconds of the filesystem process (raw: of curl) / CPU seconds of "
        "radosgw + ceph-osd / peak RSS of the filesystem process in MiB.",
        "",
        "| workload | " + " | ".join(LABELS.get(s, s) for s in systems) + " |",
        "|" + "---|" * (len(systems) + 1),
    ]
    for wl in WORKLOADS:
        if not medians.get(wl):
            continue
        row = [wl]
        for s in systems:
            e = medians[wl].get(s)
            if not e or e["status"] != "ok":
                row.append("—")
                continue
            rss = f"{e['rss_kib'] / 1024:.0f}" if "rss_kib" in e else "—"
            row.append(f"{e.get('fs_cpu_s', 0):.2f} / {e.get('server_cpu_s', 0):.2f} / {rss}")
        lines.append("| " + " | ".join(row) + " |")
    problems = [f"{wl} on {s}: {e.get('error', '')}" for wl, per in medians.items()
                for s, e in per.items() if e.get("failed")]
    if problems:
        lines += ["", "Failed measurements: " + "; ".join(problems) + "."]
    if png_name:
        lines += ["", f"Chart of the ratios: `{png_name}`."]
    return "\n".join(lines) + "\n"


def chart(path, rat, systems, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib not available; no chart", file=sys.stderr)
        return False
    others = [s for s in systems if s != "bucketfs"]
    wls = [wl for wl in WORKLOADS if any(rat.get(wl, {}).get(s) for s in others)]
    if not wls or not others:
        return False
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(wls) + 2), 5))
    width = 0.8 / len(others)
    for i, other in enumerate(others):
        xs, ys = [], []
        for j, wl in enumerate(wls):
            r = rat[wl].get(other)
            if r:
                xs.append(j + (i - (len(others) - 1) / 2) * width)
                ys.append(r)
        # Bars grow from 1 (equal speed) up or down.
        ax.bar(xs, [y - 1 for y in ys], width, bottom=1, label=f"vs {LABELS.get(other, other)}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(wls)))
    ax.set_xticklabels(wls, rotation=30, ha="right")
    ax.set_ylabel("bucketfs speed ÷ other's (log; >1 = bucketfs better)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png")
    ap.add_argument("--append-md")
    a = ap.parse_args()

    with open(a.meta) as f:
        meta = json.load(f)
    with open(a.samples) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    systems = meta["systems"]
    mach = machine()
    medians = summarize(samples, systems)
    rat = ratios(medians, systems)

    png_name = None
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if a.png and "bucketfs" in systems:
        title = f"bucketfs vs peers, {'quick smoke run' if meta['quick'] else 'median of %d' % meta['reps']}, {meta['date'][:10]}"
        if chart(a.png, rat, systems, title):
            png_name = os.path.abspath(a.png)
            if png_name.startswith(root + os.sep):
                png_name = os.path.relpath(png_name, root)

    doc = dict(meta, machine=mach, medians=medians, ratios_bucketfs_over=rat,
               chart=png_name, samples=samples)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    md = markdown(meta, mach, medians, rat, systems, png_name)
    with open(a.md, "w") as f:
        f.write(md)
    if a.append_md:
        with open(a.append_md, "a") as f:
            f.write(md)
    print(md)
    failed = sum(s["status"] == "failed" for s in samples)
    if failed:
        print(f"report.py: {failed} measurement(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
