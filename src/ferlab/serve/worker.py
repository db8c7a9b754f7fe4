"""Inference in child processes, so that the server process's GIL serves only HTTP.

Decoding a 40 MP upload and running the detector on it hold the GIL for 20-40 ms at a time (measured with
py-spy); in a thread of the server that is 20-40 ms in which the event loop, `/health` included, cannot run.
Each `InferenceWorker` is one process started with 'spawn' (a fork would copy the server's threads and locks)
that builds the Predictor once and then runs `fn(predictor, lock, *args)` per request, where `fn` is a
module-level function (pickled by name) such as `serve.analysis.analyse_photo`. Only the compressed upload (or a
video's temp-file path) goes in and only the JSON-ready answer comes out; an HTTPException raised in the
worker comes back as the same status and detail.

A worker that dies (killed for memory, say) costs the request it was serving a 503; the next request starts
a fresh one. A worker whose server dies sees its pipe close and exits. Like every 'spawn' child, a worker
first imports the script that started it: a script that calls `create_app()` needs the
`if __name__ == "__main__":` guard (`ferlab serve` and `uvicorn --factory` have it).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import wait

from fastapi import HTTPException


NICE = 10  # the workers' scheduling priority relative to the server (os.nice increment)


def _worker_main(conn, model: str, detector: str, device: str, threads: int | None,
                 cpus: frozenset[int] | None = None) -> None:
    # Ctrl-C reaches the whole process group; the server stops its workers itself (and a worker's
    # KeyboardInterrupt traceback would only clutter the terminal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # below the server in the CPU scheduler: when a /health request wakes the event loop it gets a core at
    # once instead of queueing behind inference threads (on a machine with nothing else to run, inference
    # still takes every core it is given)
    os.nice(NICE)
    if cpus:  # the cores `ferlab serve` gives inference, the server keeping the others (see cli._cmd_serve)
        os.sched_setaffinity(0, cpus)
    _exit_with_parent(os.getppid())
    from .analysis import describe_predictor, map_big_buffers
    map_big_buffers()
    try:
        import cv2
        import torch
        if threads is not None:
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        from ..inference.predictor import Predictor
        predictor = Predictor(model=model, detector=detector, device=device)
        info = dict(classes=[str(c) for c in predictor.classes], pid=os.getpid(), threads=torch.get_num_threads(),
                    cpus=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
        info["model"], info["detector"] = describe_predictor(predictor, model, detector)
    except BaseException as e:  # the server re-raises it: `ferlab serve --model nope.pt` is one error line
        conn.send(("error", _picklable(e)))
        return
    conn.send(("ready", info))
    lock = threading.Lock()  # one request at a time here anyway; the work functions take the server's lock too
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the server is gone
            return
        if job is None:
            return
        fn, args = job
        try:
            reply = ("ok", fn(predictor, lock, *args))
        except HTTPException as e:
            reply = ("http", e.status_code, e.detail)
        except Exception as e:
            traceback.print_exc()  # into the server's stderr, where its own tracebacks go
            reply = ("error", _picklable(e))
        conn.send(reply)


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this process as soon as `parent` is gone, however it died (SIGKILL included) and whatever this
    process is busy with: a closed pipe is only noticed between jobs, not in the middle of a long one."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)
    threading.Thread(target=watch, name="ferlab-parent-watch", daemon=True).start()


def _picklable(e: BaseException) -> BaseException:
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


class InferenceWorker:
    """One inference process holding a Predictor built from `model`/`detector`/`device`, with `threads`
    PyTorch/OpenCV threads (None: their default), run on the cores in `cpus` (None: wherever the OS puts it). Started, model loaded, on construction; `call` is blocking
    and serves one request at a time (callers wait on a lock); `close` stops the process."""

    def __init__(self, model: str, detector: str, device: str = "cpu", threads: int | None = None,
                 start_timeout_s: float = 300.0, cpus: set[int] | None = None):
        self.args = (model, detector, device, threads, frozenset(cpus) if cpus else None)
        self.start_timeout_s = start_timeout_s
        self.process = None
        self.conn = None
        self.lock = threading.Lock()
        self.info = self._start()

    def _start(self) -> dict:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, *self.args), name="ferlab-inference", daemon=True)
        process.start()
        child.close()  # the worker holds the only other end: its death shows here as EOF
        if not wait([parent, process.sentinel], self.start_timeout_s) or not parent.poll():
            InferenceWorker._stop(process)
            raise RuntimeError(f"the inference worker did not load the model within {self.start_timeout_s:.0f} s"
                               if process.is_alive() else
                               f"the inference worker exited while loading the model ({_exit(process)})")
        try:
            kind, payload = parent.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"the inference worker exited while loading the model ({_exit(process)})") from None
        if kind == "error":
            process.join(5)
            raise payload
        self.process, self.conn = process, parent
        return payload

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def call(self, fn, *args, budget_s: float | None = None, what: str = "upload"):
        """`fn(predictor, lock, *args)` run in the worker: its result, or the HTTPException it raised
        (re-raised here), or HTTPException 503 when the worker died meanwhile or took more than `budget_s`
        seconds (then it is killed: the next call starts a fresh one)."""
        with self.lock:
            if self.process is None or not self.process.is_alive():
                # died between requests (or was closed): this request is served by a fresh worker
                self.close()
                try:
                    self.info = self._start()
                except Exception as e:
                    raise HTTPException(503, f"could not start a fresh inference worker: {e}") from None
            process, conn = self.process, self.conn
            try:
                conn.send((fn, args))
                if not wait([conn, process.sentinel], budget_s):  # over budget: stop it, whatever it is doing
                    self._stop(process)
                    if self.process is process:
                        self.process = self.conn = None
                    raise HTTPException(503, f"analysing this {what} took longer than the server's budget of "
                                             f"{budget_s:g} s, so it was stopped; try a smaller or simpler file")
                if not conn.poll():
                    raise EOFError
                reply = conn.recv()
            except (EOFError, OSError):
                self._stop(process)
                if self.process is process:
                    self.process = self.conn = None
                raise HTTPException(503, f"the inference worker process died while analysing this upload "
                                         f"({_exit(process)}; out of memory?); a fresh one starts with the next "
                                         "request, try again") from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "http":
            raise HTTPException(reply[1], reply[2])
        raise reply[1]

    def close(self) -> None:
        """Stop the worker (a request in flight gets a 503). A later `call` starts a fresh one."""
        process, conn, self.process, self.conn = self.process, self.conn, None, None
        self._stop(process)
        if conn is not None:
            conn.close()

    @staticmethod
    def _stop(process) -> None:
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
        process.join(5)


def _exit(process) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
