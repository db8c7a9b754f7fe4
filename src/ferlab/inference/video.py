"""Video people can watch: face tracks across frames, H.264 MP4 that browsers play, and a per-video summary
(emotion share over time as CSV and as a PNG timeline)."""
from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

import numpy as np

from .._atomic import WriteError, replacing, temp_name


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class IoUTracker:
    """Gives each face a track id that it keeps from frame to frame.

    A face continues the track whose last box overlaps it most (IoU at least `min_iou`, best pairs first); a
    track unseen for more than `max_missed` sampled frames ends; a face that continues no track starts a new
    one. Ids count from 1 in each video. Enough for the slow motion of faces between nearby frames; faces
    that cross each other may swap ids.
    """

    def __init__(self, min_iou: float = 0.3, max_missed: int = 10):
        self.min_iou, self.max_missed = min_iou, max_missed
        self.tracks: dict[int, tuple[tuple, int]] = {}  # id -> (last box, frames since seen)
        self.next_id = 1

    def update(self, boxes: list) -> list[int]:
        pairs = sorted(((iou(box, last), i, tid) for i, box in enumerate(boxes)
                        for tid, (last, _) in self.tracks.items()), reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        for overlap, i, tid in pairs:
            if overlap < self.min_iou:
                break
            if ids[i] is None and tid not in taken:
                ids[i] = tid
                taken.add(tid)
        for tid, (last, missed) in list(self.tracks.items()):
            if tid not in taken:
                if missed + 1 > self.max_missed:
                    del self.tracks[tid]
                else:
                    self.tracks[tid] = (last, missed + 1)
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self.next_id
                self.next_id += 1
            self.tracks[ids[i]] = (tuple(box), 0)
        return ids  # type: ignore[return-value]


class H264Writer:
    """RGB frames -> an H.264 MP4 (yuv420p, moov atom first) through the ffmpeg binary that the imageio-ffmpeg
    wheel ships: the codec and layout every browser plays. Odd frame sizes are padded by one pixel, since
    4:2:0 chroma needs even sides.

    The video is written under a temporary name and appears at `path` whole, on `close`. When ffmpeg fails
    (the disk is full) its temporary file is removed and `write` or `close` raises WriteError; ffmpeg's own
    messages go to that error, never to the terminal. `abort` drops the video unfinished."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        try:
            import imageio_ffmpeg
        except ImportError as e:
            raise RuntimeError("writing video needs imageio-ffmpeg (pip install imageio-ffmpeg)") from e
        w, h = size
        self.pad = (w % 2, h % 2)
        self.path = Path(path)
        self._tmp = temp_name(self.path)
        self._log = tempfile.TemporaryFile()
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w + self.pad[0]}x{h + self.pad[1]}", "-r", f"{float(fps or 25.0)}", "-i", "-", "-an",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-preset", "veryfast",
               "-movflags", "+faststart", str(self._tmp)]
        # its own session: Ctrl-C reaches ferlab alone, which still closes the video it has (a playable MP4)
        own = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, **own)

    def write(self, rgb: np.ndarray) -> None:
        if any(self.pad):
            rgb = np.pad(rgb, ((0, self.pad[1]), (0, self.pad[0]), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(rgb, dtype=np.uint8))
        except OSError:  # ffmpeg has stopped: say why
            self._failed()

    def close(self) -> None:
        """Finish the video and put it in place; WriteError (and no file) when ffmpeg could not."""
        if self._proc is None:
            return
        with suppress(OSError):
            self._proc.stdin.close()  # a broken pipe here is told by ffmpeg's exit status
        if self._proc.wait() != 0:
            self._failed()
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise WriteError.from_os(self.path, e) from None
        self._proc = None
        self._log.close()

    def abort(self) -> None:
        """Stop ffmpeg and remove the unfinished video."""
        if self._proc is not None:
            self._proc.kill()
            with suppress(OSError):
                self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
            self._log.close()
        with suppress(OSError):
            self._tmp.unlink(missing_ok=True)

    def _failed(self):
        self._proc.kill()  # it may still be running when a write failed for another reason
        status = self._proc.wait()
        self._log.seek(0)
        said = self._log.read().decode(errors="replace")
        self.abort()
        if "No space left on device" in said:  # ffmpeg's words for ENOSPC
            raise WriteError(self.path, "no space left on device", full=True)
        last = [ln.strip() for ln in said.splitlines() if ln.strip()]
        raise WriteError(self.path, f"ffmpeg failed ({last[-1] if last else f'exit status {status}'})")


class VideoSummary:
    """The emotion share over time of one video: for each sampled frame, the mean of its faces' probabilities.
    `write_csv` saves it as CSV (time_s, frame, faces, one column per class; empty where no face was seen),
    `write_timeline` as a PNG timeline (stacked shares against time); each file appears whole or not at all."""

    def __init__(self, source: str, classes: tuple[str, ...]):
        self.source, self.classes = source, tuple(classes)
        self.rows: list[tuple[float, int, int, np.ndarray | None]] = []

    def add(self, frame: int, time_s: float | None, faces: list[dict]) -> None:
        share = np.mean([[f["probs"][c] for c in self.classes] for f in faces], axis=0) if faces else None
        self.rows.append((float(time_s if time_s is not None else frame), int(frame), len(faces), share))

    def write_csv(self, path: str | Path) -> Path:
        with replacing(path) as tmp, open(tmp, "w", newline="") as f:
            f.write(self.csv_text())
        return Path(path)

    def csv_text(self) -> str:
        """The CSV `write_csv` saves, as text (the REST API sends it inline)."""
        import io
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["time_s", "frame", "faces", *self.classes])
        for t, frame, n, share in self.rows:
            w.writerow([f"{t:.3f}", frame, n, *([f"{v:.4f}" for v in share] if share is not None
                                                 else [""] * len(self.classes))])
        return buf.getvalue()

    def write_timeline(self, path: str | Path) -> Path:
        with replacing(path) as tmp:
            self._plot(tmp)
        return Path(path)

    def timeline_png(self) -> bytes:
        """The PNG timeline `write_timeline` saves, as bytes (the REST API sends it inline)."""
        import io
        buf = io.BytesIO()
        self._plot(buf)
        return buf.getvalue()

    def _plot(self, path) -> None:
        from ..engine.plots import plain_text, plt
        t = np.array([r[0] for r in self.rows])
        shares = np.array([r[3] if r[3] is not None else np.full(len(self.classes), np.nan) for r in self.rows])
        with plain_text():  # the title is the video's name: text, never a formula
            fig, ax = plt.subplots(figsize=(10, 3.6))
            if len(t):
                ax.stackplot(t, np.nan_to_num(shares.T) if shares.size else [], labels=self.classes,
                             colors=[EMOTION_COLOURS.get(c, "grey") for c in self.classes], alpha=0.9)
                ax.set_xlim(t.min(), max(t.max(), t.min() + 1e-3))
            faceless = [r[0] for r in self.rows if r[3] is None]
            if faceless:
                ax.plot(faceless, [1.02] * len(faceless), "|", color="black", label="no face", clip_on=False)
            ax.set_ylim(0, 1)
            ax.set_xlabel("time (s)")
            ax.set_ylabel("emotion share")
            ax.set_title(f"{Path(self.source).name}: mean of the faces' probabilities per frame")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)


EMOTION_COLOURS = {"angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#ffbf00",
                   "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#aaaaaa"}
