"""Video people can watch: face tracks across frames, H.264 MP4 that browsers play, and a per-video summary
(emotion share over time as CSV and as a PNG timeline)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


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
    4:2:0 chroma needs even sides."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        try:
            import imageio_ffmpeg
        except ImportError as e:
            raise RuntimeError("writing video needs imageio-ffmpeg (pip install imageio-ffmpeg)") from e
        w, h = size
        self.pad = (w % 2, h % 2)
        self.path = Path(path)
        self._gen = imageio_ffmpeg.write_frames(
            str(path), (w + self.pad[0], h + self.pad[1]), fps=float(fps or 25.0), codec="libx264",
            pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
            output_params=["-crf", "23", "-preset", "veryfast", "-movflags", "+faststart"],
            ffmpeg_log_level="error")
        self._gen.send(None)

    def write(self, rgb: np.ndarray) -> None:
        if any(self.pad):
            rgb = np.pad(rgb, ((0, self.pad[1]), (0, self.pad[0]), (0, 0)), mode="edge")
        self._gen.send(np.ascontiguousarray(rgb, dtype=np.uint8))

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


class VideoSummary:
    """The emotion share over time of one video: for each sampled frame, the mean of its faces' probabilities.
    `write` saves it as CSV (time_s, frame, faces, one column per class; empty where no face was seen) and as
    a PNG timeline (stacked shares against time)."""

    def __init__(self, source: str, classes: tuple[str, ...]):
        self.source, self.classes = source, tuple(classes)
        self.rows: list[tuple[float, int, int, np.ndarray | None]] = []

    def add(self, frame: int, time_s: float | None, faces: list[dict]) -> None:
        share = np.mean([[f["probs"][c] for c in self.classes] for f in faces], axis=0) if faces else None
        self.rows.append((float(time_s if time_s is not None else frame), int(frame), len(faces), share))

    def write(self, csv_path: str | Path, png_path: str | Path) -> list[Path]:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["time_s", "frame", "faces", *self.classes])
            for t, frame, n, share in self.rows:
                w.writerow([f"{t:.3f}", frame, n, *([f"{v:.4f}" for v in share] if share is not None
                                                     else [""] * len(self.classes))])
        self._plot(png_path)
        return [Path(csv_path), Path(png_path)]

    def timeline_png(self) -> bytes:
        """The PNG timeline `write` saves, as bytes (the REST API sends it inline)."""
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
