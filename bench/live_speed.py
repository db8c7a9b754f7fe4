"""Live mode end to end: frames/s answered and how far the boxes are behind, the browser included.

    python bench/live_speed.py [--seconds 20] [--warmup 5] [--model default] [--detector mtcnn] [--serve-args '...']

Starts `ferlab serve` on a free loopback port, then headless Chromium (Playwright, /usr/bin/chromium) whose fake
camera plays a 640x480 clip made here (`make_clip`: skimage's astronaut, her head moving left and right over a
soft background, 30 frames/s), opens the web page, presses Live webcam, lets it run `--warmup` seconds (the
first session starts its live worker, which loads the model), then measures `--seconds` seconds. Every number is
the page's own (window.ferlabLive): frames answered per second; for each frame drawn, the milliseconds from
taking it off the video to drawing it with its boxes (p50 and p95: that is how far the boxes are behind what the
camera gave the page, the camera's own delay not included); the server's time per frame; the share of frames
drawn with a face boxed. CPU, as shares of one core over the measured window: the server's processes (the web
server, its live worker), the browser's (Chromium's, with Playwright's driver and this script), and the rest of
the machine (whatever else ran meanwhile: other people's work on a shared machine shows here). Run it under
`taskset -c 0` to give browser and server one core between them.
Prints one Markdown table row (and the header with --header).

`make_clip` is also the clip of the web page's live test (tests/test_web.py): each frame carries its number in
a strip of black and white blocks along its bottom edge, so that whoever reads a drawn frame knows which it is,
and where the face in it is.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS = 640, 480, 30
HEAD_SIDE = 260                     # the pasted head's side in the clip, in pixels
HEAD_CROP = (137, 38, 307, 208)     # the astronaut photo's head (512x512 picture): x0, y0, x1, y1
NOSE = (222, 118)                   # her nose in the photo (as tests/test_serve.py's ASTRONAUT_NOSE)
HEAD_Y = 120
STEP = 16                           # pixels the head moves each frame
STEPS = 18                          # frames one way; the clip goes there and back: 2 x STEPS frames
BITS, BLOCK, BLOCK_Y = 6, 40, 448   # the frame number's strip: 6 blocks 32x24 px from (16, 448)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def head_x(frame: int) -> int:
    """The left edge of the head in clip frame `frame` (there and back, STEP pixels a frame)."""
    k = frame % (2 * STEPS)
    return 40 + STEP * (k if k < STEPS else 2 * STEPS - 1 - k)


def nose_at(frame: int) -> tuple[float, float]:
    """Her nose in clip frame `frame`, in pixels of the 640x480 frame."""
    s = HEAD_SIDE / (HEAD_CROP[2] - HEAD_CROP[0])
    return head_x(frame) + (NOSE[0] - HEAD_CROP[0]) * s, HEAD_Y + (NOSE[1] - HEAD_CROP[1]) * s


def clip_frames() -> list[np.ndarray]:
    """The clip's 2 x STEPS RGB frames: a soft vertical gradient, the head at head_x(k), the number k in blocks."""
    import cv2
    from skimage.data import astronaut
    x0, y0, x1, y1 = HEAD_CROP
    head = cv2.resize(astronaut()[y0:y1, x0:x1], (HEAD_SIDE, HEAD_SIDE), interpolation=cv2.INTER_AREA)
    ramp = np.linspace(70, 150, HEIGHT, dtype=np.float32)[:, None, None]
    background = (ramp * np.array([0.8, 0.9, 1.0], np.float32)).repeat(WIDTH, 1).astype(np.uint8)
    out = []
    for k in range(2 * STEPS):
        im = background.copy()
        x = head_x(k)
        im[HEAD_Y:HEAD_Y + HEAD_SIDE, x:x + HEAD_SIDE] = head
        for bit in range(BITS):
            left = 16 + BLOCK * bit
            im[BLOCK_Y:BLOCK_Y + 24, left:left + 32] = 235 if (k >> bit) & 1 else 16
        out.append(im)
    return out


def read_number(rgb: np.ndarray) -> int:
    """The frame number written in a clip frame's blocks (`rgb` at the clip's 640x480)."""
    return sum(1 << bit for bit in range(BITS) if rgb[BLOCK_Y + 12, 16 + BLOCK * bit + 16].mean() > 128)


def make_clip(path: Path) -> Path:
    """The clip as YUV4MPEG2 (raw I420, what Chromium's --use-file-for-fake-video-capture plays, looping)."""
    import cv2
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for im in clip_frames():
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(im, cv2.COLOR_RGB2YUV_I420).tobytes())  # Y, then U, then V planes
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, limit_s: float = 180.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ferlab serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"ferlab serve did not answer /health within {limit_s:.0f} s")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick
        todo += children.get(p, [])
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy so far (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(port: int, clip: Path, server_pid: int, warmup_s: float, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={clip}"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + camera, headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#go-live")
        deadline = time.monotonic() + 180
        while not page.evaluate("window.ferlabLive.answered"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no live answer within 180 s; status: {page.inner_text('#status')!r} {errors}")
            page.wait_for_timeout(200)
        page.wait_for_timeout(warmup_s * 1000)
        snap = "() => { const s = window.ferlabLive; return {t: performance.now(), answered: s.answered, " \
               "drawn: s.drawn, sent: s.sent, errors: s.errors, transport: s.transport}; }"
        a = page.evaluate(snap)
        cpu0, all0, busy0 = tree_cpu_s(server_pid), tree_cpu_s(os.getpid()), machine_busy_s()
        page.wait_for_timeout(seconds * 1000)
        b = page.evaluate(snap)
        cpu1, all1, busy1 = tree_cpu_s(server_pid), tree_cpu_s(os.getpid()), machine_busy_s()
        drawn = b["drawn"] - a["drawn"]
        if drawn > 2000:
            raise RuntimeError("more frames drawn than the page keeps measurements of; measure fewer seconds")
        lists = page.evaluate(f"() => ({{lat: window.ferlabLive.latencyMs.slice(-{max(drawn, 1)}), "
                              f"server: window.ferlabLive.serverMs.slice(-{max(b['answered'] - a['answered'], 1)})}})")
        faces = page.evaluate("() => document.querySelectorAll('#live-boxes .box').length")
        status = page.inner_text("#status")
        browser.close()
    elapsed = (b["t"] - a["t"]) / 1000
    lat = sorted(lists["lat"])
    return dict(fps=(b["answered"] - a["answered"]) / elapsed, drawn_fps=drawn / elapsed,
                p50=_pct(lat, 50), p95=_pct(lat, 95), server_ms=statistics.median(lists["server"] or [float("nan")]),
                errors=b["errors"] - a["errors"], transport=b["transport"], faces_now=faces,
                server_cpu=(cpu1 - cpu0) / elapsed, browser_cpu=((all1 - all0) - (cpu1 - cpu0)) / elapsed,
                other_cpu=((busy1 - busy0) - (all1 - all0)) / elapsed, status=status,
                page_errors=errors)


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds of live mode (default: 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of live mode before measuring (default: 5)")
    p.add_argument("--model", default="default")
    p.add_argument("--detector", default="mtcnn")
    p.add_argument("--serve-args", default="", help="extra arguments for ferlab serve, e.g. '--threads 1'")
    p.add_argument("--header", action="store_true", help="print the table's header first")
    a = p.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"needs {CHROMIUM} (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="ferlab-live-") as tmp:
        clip = make_clip(Path(tmp) / "clip.y4m")
        port = free_port()
        cmd = [sys.executable, "-m", "ferlab.cli", "serve", "--model", a.model, "--detector", a.detector,
               "--port", str(port), *shlex.split(a.serve_args)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(port, proc)
            r = measure(port, clip, proc.pid, a.warmup, a.seconds)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    cores = len(os.sched_getaffinity(0))
    if a.header:
        print("| frames/s answered | drawn/s | behind p50 ms | behind p95 ms | server ms/frame p50 | server CPU | "
              "browser CPU | rest of machine CPU | transport | cores | command |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    print(f"| {r['fps']:.1f} | {r['drawn_fps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['server_ms']:.1f} | "
          f"{100 * r['server_cpu']:.0f}% | {100 * r['browser_cpu']:.0f}% | {100 * r['other_cpu']:.0f}% | "
          f"{r['transport']} | {cores} | "
          f"`python bench/live_speed.py {' '.join(shlex.quote(x) for x in sys.argv[1:])}` |")
    if r["errors"] or r["page_errors"]:
        print(f"frame errors: {r['errors']}; page errors: {r['page_errors']}; status: {r['status']!r}", file=sys.stderr)
    print(f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores on the machine, {cores} given; "
          f"CPU shares are of one core)", file=sys.stderr)


if __name__ == "__main__":
    main()
