#!/usr/bin/python3
"""Small measuring and setup helpers for bench/e2e/run.sh (Debian's /usr/bin/python3).

    helpers.py offsets SIZE COUNT SEED          4 KiB-aligned random offsets, one per line
    helpers.py randread PATH SIZE COUNT SEED    cold random 4 KiB preads, one at a time
    helpers.py ttfb PATH                        open + first byte, then the rest of the file
    helpers.py stats                            mean/p50/p99 in ms of seconds read on stdin
    helpers.py fio JSONFILE                     iops and latency of a fio --output-format=json run
    helpers.py put-many BUCKET PREFIX COUNT     COUNT small objects PREFIX000000.. (boto3, 32 threads)
    helpers.py put-tree BUCKET PREFIX DIRS FILES  DIRS directories PREFIXd000/.. of FILES small
                                                objects each; every other one has a marker
                                                object (d000/) with s3fs's mode, uid, gid and
                                                mtime (0750, 1000, 1000, 1600000000)
    helpers.py delete-prefix BUCKET PREFIX      delete every object under PREFIX (boto3)
    helpers.py touch-memory KEEP_GIB [MAX_GIB]  write one byte per page of all but KEEP_GIB of the
                                                available memory (at most MAX_GIB), then free it
                                                (see run.sh)

Measuring commands print "key=value" pairs on one line (run.sh records them as they are).
Times are taken inside the process, so interpreter start-up is not measured.
The S3 commands read S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY and S3_SECRET_KEY.
"""
import json
import os
import random
import sys
import time

BLOCK = 4096


def offsets(size, count, seed):
    rng = random.Random(seed)
    last_block = max(0, size // BLOCK - 1)
    return [rng.randint(0, last_block) * BLOCK for _ in range(count)]


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def latency_summary(seconds):
    v = sorted(seconds)
    mean = sum(v) / len(v) if v else float("nan")
    return (f"mean_ms={mean * 1e3:.3f} p50_ms={percentile(v, 50) * 1e3:.3f} "
            f"p99_ms={percentile(v, 99) * 1e3:.3f} count={len(v)}")


def cmd_offsets(size, count, seed):
    for off in offsets(int(size), int(count), int(seed)):
        print(off)


def cmd_randread(path, size, count, seed):
    offs = offsets(int(size), int(count), int(seed))
    lat = []
    t_start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offs:
            t0 = time.perf_counter()
            data = os.pread(fd, BLOCK, off)
            lat.append(time.perf_counter() - t0)
            if len(data) != BLOCK:
                sys.exit(f"short read at {off}: {len(data)} bytes")
    finally:
        os.close(fd)
    wall = time.perf_counter() - t_start
    print(f"{latency_summary(lat)} wall_s={wall:.4f}")


def cmd_ttfb(path):
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        first = f.read(1)
        t1 = time.perf_counter()
        total = len(first)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    t2 = time.perf_counter()
    print(f"ttfb_ms={(t1 - t0) * 1e3:.3f} wall_s={t2 - t0:.4f} bytes={total}")


def cmd_stats():
    values = [float(x) for x in sys.stdin.read().split()]
    print(latency_summary(values))


def cmd_fio(jsonfile):
    with open(jsonfile) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    doc = json.loads(text[text.index("{"):])
    job = doc["jobs"][0]  # --group_reporting: one entry for all jobs
    rd = job["read"]
    clat = rd["clat_ns"]
    p99 = clat.get("percentile", {}).get("99.000000", float("nan"))
    print(f"iops={rd['iops']:.1f} mean_ms={clat['mean'] / 1e6:.3f} p99_ms={p99 / 1e6:.3f} "
          f"ios={rd['total_ios']} wall_s={job['job_runtime'] / 1e3:.3f}")


def s3_client():
    import boto3
    from botocore.config import Config
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ["S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5},
                      max_pool_connections=32),
    )


def cmd_put_many(bucket, prefix, count):
    from concurrent.futures import ThreadPoolExecutor
    s3 = s3_client()
    count = int(count)

    def put(i):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i:06d}", Body=f"object {i}\n".encode())

    with ThreadPoolExecutor(32) as pool:
        for _ in pool.map(put, range(count)):
            pass


def cmd_put_tree(bucket, prefix, dirs, files):
    from concurrent.futures import ThreadPoolExecutor
    s3 = s3_client()
    marker_meta = {"mode": str(0o40750), "uid": "1000", "gid": "1000", "mtime": "1600000000"}
    puts = []
    for d in range(int(dirs)):
        path = f"{prefix}d{d:03d}/"
        if d % 2 == 0:
            puts.append((path, b"", marker_meta))
        puts += [(f"{path}f{f}", f"file {f} of {path}\n".encode(), {}) for f in range(int(files))]

    def put(item):
        s3.put_object(Bucket=bucket, Key=item[0], Body=item[1], Metadata=item[2])

    with ThreadPoolExecutor(32) as pool:
        for _ in pool.map(put, puts):
            pass


def cmd_delete_prefix(bucket, prefix):
    s3 = s3_client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def cmd_touch_memory(keep_gib, max_gib=None):
    import mmap
    available = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    size = available - int(float(keep_gib) * (1 << 30))
    if max_gib is not None:
        size = min(size, int(float(max_gib) * (1 << 30)))
    if size <= 0:
        print("touched=0")
        return
    start = time.monotonic()
    region = mmap.mmap(-1, size)
    view = memoryview(region)
    for offset in range(0, size, mmap.PAGESIZE):
        view[offset] = 1
    view.release()
    region.close()
    print(f"touched_gib={size / (1 << 30):.1f} seconds={time.monotonic() - start:.1f}")


COMMANDS = {
    "offsets": cmd_offsets,
    "randread": cmd_randread,
    "ttfb": cmd_ttfb,
    "stats": cmd_stats,
    "fio": cmd_fio,
    "put-many": cmd_put_many,
    "put-tree": cmd_put_tree,
    "delete-prefix": cmd_delete_prefix,
    "touch-memory": cmd_touch_memory,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
