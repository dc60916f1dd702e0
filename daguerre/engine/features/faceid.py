"""Face analysis for PuLID: insightface's `antelopev2` models run with onnxruntime from a local folder.

  scrfd_10g_bnkps.onnx  SCRFD detection with 5 landmarks (eyes, nose tip, mouth corners): a 640x640
                        letterboxed input, (x - 127.5) / 128 in RGB; per stride 8/16/32 and 2 anchors a
                        score, box distances and landmark offsets (in strides)
  glintr100.onnx        ArcFace (ResNet-100, Glint360K): a 112x112 crop aligned to ArcFace's 5-point template,
                        (x - 127.5) / 127.5 in RGB -> a 512-d identity embedding (PuLID takes it unnormalized)

Any .onnx pair in the folder is accepted by role: the model with one input of 112x112 is the recognizer, the
one with 9 outputs (or 6: no landmarks) the detector. Nothing is downloaded; insightface itself (a compiled
package) is not needed. The models' licence is insightface's: non-commercial research use (docs/models.md).

The largest face is the identity, as in PuLID. Its landmarks also align the 512x512 face crop that the EVA
tower reads (FFHQ's 5-point template, as facexlib's FaceRestoreHelper does, with its grey border).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daguerre.errors import ModelLoadError, RequestError

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)  # fmt: skip
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)  # fmt: skip
FFHQ_BORDER = (132, 133, 135)  # RGB of facexlib's constant border
DET_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2
DET_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class FaceAnalysis:
    """The detector and the recognizer of one antelopev2-style folder."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ModelLoadError("puLID's face analysis needs onnxruntime (pip install onnxruntime)",
                                 parameter="puLID") from e  # fmt: skip
        self.detector = self.recognizer = None
        for f in sorted(folder.glob("*.onnx")):
            s = _session(f)
            inputs, outputs = s.get_inputs(), s.get_outputs()
            if len(inputs) == 1 and list(inputs[0].shape[-2:]) == [112, 112]:
                self.recognizer = self.recognizer or s
            elif len(outputs) in (6, 9):
                self.detector = self.detector or s
        if self.detector is None or self.recognizer is None:
            raise ModelLoadError(f"{folder} needs insightface's detection (scrfd_10g_bnkps.onnx) and recognition "
                                 "(glintr100.onnx) models", parameter="puLID")  # fmt: skip

    # ---- detection (SCRFD)
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        import cv2

        h, w = rgb.shape[:2]
        scale = DET_SIZE / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        canvas = np.zeros((DET_SIZE, DET_SIZE, 3), dtype=np.float32)
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh)).astype(np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.detector.run(None, {self.detector.get_inputs()[0].name: blob})
        return [
            Face(tuple(float(v) for v in b / scale), float(s), k / scale) for b, s, k in decode_scrfd(outs, DET_SIZE)
        ]

    # ---- recognition (ArcFace)
    def aligned(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The 512x512 FFHQ-aligned face (what the EVA tower reads)."""
        return align(rgb, face.landmarks, FFHQ_TEMPLATE, 512, border=FFHQ_BORDER, robust=True)

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The raw (unnormalized) ArcFace embedding of `face`."""
        crop = align(rgb, face.landmarks, ARCFACE_TEMPLATE, 112, border=(0, 0, 0), robust=False)
        blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        return self.recognizer.run(None, {self.recognizer.get_inputs()[0].name: blob})[0][0]


def decode_scrfd(outs: list[np.ndarray], size: int, threshold: float = DET_THRESHOLD):
    """SCRFD's raw outputs (scores, boxes, landmarks per stride) -> [(box (4,), score, landmarks (5, 2))] after NMS,
    in the network input's pixels."""
    n = len(STRIDES)
    with_kps = len(outs) == 3 * n
    boxes, scores, kpss = [], [], []
    for i, stride in enumerate(STRIDES):
        score = outs[i].reshape(-1)
        dist = outs[i + n].reshape(-1, 4) * stride
        g = size // stride
        ys, xs = np.mgrid[:g, :g]
        centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centers = np.repeat(centers, ANCHORS, axis=0)
        keep = np.where(score >= threshold)[0]
        c, d = centers[keep], dist[keep]
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        scores.append(score[keep])
        if with_kps:
            k = outs[i + 2 * n].reshape(-1, 10)[keep] * stride
            kpss.append(c[:, None, :] + k.reshape(-1, 5, 2))
        else:
            kpss.append(np.zeros((len(keep), 5, 2), dtype=np.float32))
    boxes, scores, kpss = np.concatenate(boxes), np.concatenate(scores), np.concatenate(kpss)
    order = np.argsort(-scores, kind="stable")
    kept = _nms(boxes[order], NMS_THRESHOLD)
    return [(boxes[order][j], scores[order][j], kpss[order][j]) for j in kept]


def _nms(boxes: np.ndarray, threshold: float) -> list[int]:
    keep, idx = [], np.arange(len(boxes))
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while idx.size:
        i, idx = idx[0], idx[1:]
        keep.append(int(i))
        xx1, yy1 = np.maximum(boxes[i, 0], boxes[idx, 0]), np.maximum(boxes[i, 1], boxes[idx, 1])
        xx2, yy2 = np.minimum(boxes[i, 2], boxes[idx, 2]), np.minimum(boxes[i, 3], boxes[idx, 3])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        idx = idx[inter / (area[i] + area[idx] - inter) <= threshold]
    return keep


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform (Umeyama, no reflection) taking src points to dst: (2, 3)."""
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[-1] = -1
    r = u @ np.diag(e) @ vt
    scale = (sig * e).sum() / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def align(rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int, border, robust: bool) -> np.ndarray:
    """The face warped so its 5 landmarks fall on `template` (in a size x size crop): least squares as
    insightface's ArcFace crop, or least median of squares as facexlib's (`robust`)."""
    import cv2

    if robust:
        m = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), template, method=cv2.LMEDS)[0]
    else:
        m = similarity(landmarks, template)
    if m is None or not np.isfinite(m).all():
        raise RequestError("the face's landmarks are degenerate; use a clearer photo", parameter="puLID.images")
    return cv2.warpAffine(rgb, m, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def largest(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None
