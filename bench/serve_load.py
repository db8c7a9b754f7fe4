"""Load test of `ferlab serve` over loopback: throughput, latency, errors, and the server's memory.

    python bench/serve_load.py [--model default] [--detector haar] [--clients 8] [--seconds 20] [--image PATH]

Starts `ferlab serve` on a free loopback port, then `--clients` threads each POST the image to /v1/predict
for `--seconds` while a separate process asks /health every 100 ms. The image defaults to the largest one the
server accepts: a 6300x6300 PNG (39.7 MP, under the 40 MP limit) of flat grey with a few shapes, about 60 KB
on the wire, so that decoding and detection, not the upload, is the load. Resident memory is summed over the
server process and its children (the inference worker, multiprocessing's resource tracker): idle before the
load (VmRSS), peak, and final after 3 s idle (VmRSS). The peak is each process's own high-water mark (VmHWM)
summed: an upper bound of the tree's peak, since the processes need not peak at the same moment.
"other CPU %" is the CPU time the rest of the machine used during the load (100 = one core's worth): the
server, its worker, the clients and the prober are not counted; "steal ms" the time a hypervisor gave the
machine's virtual cores to someone else (/proc/stat). "prober wake-up delay max" is how late the
prober itself woke from its 100 ms sleeps at worst: a /health stall that the prober shares was the machine's.
A full queue (`ferlab serve --max-queue`) answers 503 with Retry-After: 5 and closes the connection unread,
so a client still sending its body sees a reset instead; clients wait those 5 s before asking again, or ask
again at once with --no-backoff (a hostile client). The table counts 200s, 503s, resets and anything else
apart; p50/p95/p99 are over the 200s.
The server's temp folder is one of the bench's own (TMPDIR; uploads over 1 MB are spooled there while they
are parsed, in files deleted at once but held open); the bytes the server's processes hold open there are
sampled every 100 ms during the load (/proc/PID/fd) and the peak reported.
Prints one Markdown table row (and the header with --header).
"""
from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def big_png(side: int = 6300) -> bytes:
    im = Image.fromarray(np.full((side, side), 128, np.uint8)).convert("RGB")
    d = ImageDraw.Draw(im)
    for i in range(12):
        x, y = (i * 997) % (side - 600), (i * 1433) % (side - 600)
        d.ellipse((x, y, x + 500, y + 600), fill=(200 - 10 * i, 150, 100 + 8 * i))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS), or its high-water mark over its life (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc: the children of each of its threads, recursively)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for kid in kids:
            out += [kid, *descendants(kid)]
    return out


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by `pids` (those still running)."""
    total = 0
    for p in pids:
        try:
            total += sum(int(v) for v in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float]:
    """(CPU seconds the machine's cores have been busy, seconds a hypervisor ran something else on them):
    /proc/stat's user + nice + system + irq + softirq, and its steal."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = [
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def tree_mib(pid: int, field: str = "VmRSS") -> float:
    """`field` summed over `pid` and its descendants (for VmHWM: an upper bound of the tree's peak)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += rss_mib(p, field)
        except FileNotFoundError:  # exited meanwhile
            pass
    return total


def temp_bytes(pids: list[int], folder: str) -> int:
    """Bytes in the files under `folder` that `pids` hold open, deleted ones included (Starlette spools each
    upload over 1 MB into an unnamed temp file there, invisible to a listing of the folder)."""
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


RETRY_AFTER_S = 5.0  # what `ferlab serve` sends with its 503s


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
            timeout: float = 120.0) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def wait_ready(port: int, proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    end = time.time() + limit_s
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ferlab serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if request(port, "GET", "/health", timeout=2)[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"ferlab serve did not answer /health within {limit_s:.0f} s")


def probe_health(port: int, seconds: float, out) -> None:
    """Ask /health every 100 ms for `seconds`; send the latencies back. Runs in a process of its own: a probe
    thread inside the load generator also waits for that process's GIL and garbage collector (measured: max
    103 ms from a thread there while curl from outside saw 11 ms at the same time)."""
    request(port, "GET", "/health", timeout=30)  # untimed: the first call imports http.client's parsers
    times, late, end = [], [], time.time() + seconds
    while time.time() < end:
        status, dt = request(port, "GET", "/health", timeout=30)
        times.append(dt if status == 200 else float("inf"))
        t = time.perf_counter()
        time.sleep(0.1)
        late.append(time.perf_counter() - t - 0.1)  # this process's own wake-up delay: the machine's share
    out.send((times, late))
    out.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--detector", default="haar")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--image", help="image to upload (default: the 39.7 MP PNG described above)")
    p.add_argument("--serve-args", default="", help="extra arguments for ferlab serve, e.g. '--workers 1'")
    p.add_argument("--header", action="store_true", help="print the table header first")
    p.add_argument("--no-backoff", action="store_true",
                   help="clients ask again at once after a 503 or a reset, as a hostile client would (default: they "
                        "wait the 5 s the 503's Retry-After asks for)")
    a = p.parse_args()

    data = Path(a.image).read_bytes() if a.image else big_png()
    with Image.open(io.BytesIO(data)) as im:
        size = f"{im.width}x{im.height}"
    body, ctype = multipart(data, Path(a.image).name if a.image else "big.png")
    port = free_port()
    cmd = [sys.executable, "-m", "ferlab.cli", "serve", "--model", a.model, "--detector", a.detector,
           "--port", str(port), *a.serve_args.split()]
    temp = tempfile.mkdtemp(prefix="serve-load-")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": temp})
    temp_peak = [0]
    try:
        wait_ready(port, proc)
        # one untimed upload first, as any running server has had: the first request imports the multipart
        # parser and warms the model (a stall of 100+ ms on the event loop, once per process)
        request(port, "POST", "/v1/predict", *multipart(small_png(), "warm.png"))
        time.sleep(1.0)
        idle, server_idle = tree_mib(proc.pid), rss_mib(proc.pid)
        # the peak is the kernel's own high-water mark, read once afterwards: polling /proc/PID/status during
        # the load stalled the server (its page faults wait on the reader; /health max 67-92 ms, 0 unpolled)
        results: list[tuple[int, float]] = []
        lock = threading.Lock()
        end = time.time() + a.seconds

        def client():
            while time.time() < end:
                r = request(port, "POST", "/v1/predict", body, ctype)
                with lock:
                    results.append(r)
                if r[0] in (0, 503) and not a.no_backoff:  # as the 503's Retry-After asks (a reset: the same)
                    time.sleep(min(RETRY_AFTER_S, max(0.0, end - time.time())))

        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        prober = ctx.Process(target=probe_health, args=(port, a.seconds, send))
        threads = [threading.Thread(target=client) for _ in range(a.clients)]

        def watch_temp():
            while time.time() < end:
                temp_peak[0] = max(temp_peak[0], temp_bytes(tree, temp))
                time.sleep(0.1)
        watcher = threading.Thread(target=watch_temp, daemon=True)
        tree = [proc.pid, *descendants(proc.pid)]
        t0, (busy0, steal0), ours0 = time.perf_counter(), machine_cpu_s(), cpu_s(tree) + sum(os.times()[:4])
        prober.start()
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health, late = receive.recv()
        prober.join(30)
        wall = time.perf_counter() - t0
        # CPU the rest of the machine took meanwhile (another benchmark, a build): it competes with /health
        busy, steal = machine_cpu_s()
        other, steal = busy - busy0 - (cpu_s(tree) + sum(os.times()[:4]) - ours0), steal - steal0
        time.sleep(3.0)
        final, peak = tree_mib(proc.pid), tree_mib(proc.pid, "VmHWM")
        procs, server_peak = 1 + len(descendants(proc.pid)), rss_mib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)

    ok = [dt for s, dt in results if s == 200]
    busy = sum(1 for s, _ in results if s == 503)  # refused at once by a full queue (--max-queue), Retry-After
    # a refused upload's connection is closed unread: a client still sending its body sees a reset, not the 503
    reset = sum(1 for s, _ in results if s == 0)
    bad = sum(1 for s, _ in results if s not in (200, 503, 0))
    cols = ["detector", "image", "clients", "requests/s", "p50 s", "p95 s", "p99 s", "200", "503 busy", "reset", "other",
            "/health p50 ms", "/health p95 ms", "/health p99 ms", "/health max ms", "other CPU %", "steal ms",
            "prober wake-up delay max ms", "processes",
            "RSS idle MiB (sum)", "RSS peak MiB (sum of VmHWM)", "RSS final MiB (sum)", "temp folder peak MiB",
            "server process alone: RSS idle / peak MiB"]
    if a.header:
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    row = [a.detector, f"{size} ({len(data) / 1024:.0f} KB)", str(a.clients), f"{len(results) / wall:.2f}",
           f"{pct(ok, 50):.2f}", f"{pct(ok, 95):.2f}", f"{pct(ok, 99):.2f}", str(len(ok)), str(busy), str(reset), str(bad),
           f"{1000 * statistics.median(health):.0f}" if health else "-", f"{1000 * pct(health, 95):.0f}",
           f"{1000 * pct(health, 99):.0f}",
           f"{1000 * max(health):.0f}" if health else "-", f"{max(0.0, 100 * other / wall):.0f}", f"{1000 * steal:.0f}", f"{1000 * max(late):.0f}", str(procs), f"{idle:.0f}", f"{peak:.0f}", f"{final:.0f}",
           f"{temp_peak[0] / 2**20:.0f}",
           f"{server_idle:.0f} / {server_peak:.0f}"]
    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
