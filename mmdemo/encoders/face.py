"""Face: MediaPipe FaceLandmarker blendshapes + head pose, and fer's 7-class expression CNN.

Feature (62-d): the 52 ARKit-style blendshape scores (mouthSmileLeft, browDownRight, ...), head
yaw/pitch/roll in radians from the facial transformation matrix, and the 7 expression
probabilities of an expression CNN on the grey face crop: fer's ``emotion_model_quantized.tflite``
(run with ai-edge-litert), or mmdemo's own (:mod:`mmdemo.expression`) when its weights are given. The landmarker model is MediaPipe's ``face_landmarker.task``. Both files ship in
``assets/models/`` (licences, provenance and sha256 in its README) and are checked before use. No face -> absent; several faces -> the largest, and the result says so. A photo
whose face touches the border is retried once inside a 30% black frame (finds more faces).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from ..assets import AssetError, model_file
from .base import Encoder, EncoderResult, Lazy, MissingModelError

log = logging.getLogger(__name__)

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
POSE = ("yaw", "pitch", "roll")
# MediaPipe's fixed blendshape order (the model's output order)
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
N_BLENDSHAPES = len(BLENDSHAPES)
_SMILE = (BLENDSHAPES.index("mouthSmileLeft"), BLENDSHAPES.index("mouthSmileRight"))
MIN_SIDE = 16  # smaller frames cannot hold a detectable face
UPSCALE_BELOW = 96  # small stills (thumbnails, crops) are enlarged before detection
DARK = 8.0  # mean grey level under which a frame counts as black
MAX_ASPECT = 8.0  # a frame more than this many times longer than wide (or wide than long) holds no usable face


def _asset(name: str):
    try:
        return model_file(name)
    except AssetError as err:
        raise MissingModelError(str(err)) from None


def _load_landmarker():
    from mediapipe.tasks.python import BaseOptions, vision

    task = _asset("face_landmarker.task")
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(task)),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=4,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    landmarker = vision.FaceLandmarker.create_from_options(opts)
    # Close before the thread pools MediaPipe dispatches to shut down at exit (a later close,
    # atexit or __del__, raises noise at interpreter teardown).
    threading._register_atexit(landmarker.close)  # noqa: SLF001
    return landmarker


def _load_fer():
    from ai_edge_litert.interpreter import Interpreter

    model = _asset("emotion_model_quantized.tflite")
    it = Interpreter(model_path=str(model), num_threads=1)
    it.allocate_tensors()
    return it


_LANDMARKER = Lazy(_load_landmarker)
_FER = Lazy(_load_fer)
_LOCK = threading.Lock()  # the MediaPipe graph and the TFLite interpreter are not re-entrant
_OWN: dict[tuple, Lazy] = {}  # mmdemo's expression CNN, one per weights file (and version of it)
_OWN_LOCK = threading.Lock()


def _own_cnn(path: Path):
    """The network of ``path``, loaded once per file version; raises MissingModelError (remembered, so
    a damaged file is not read again for every frame) when it cannot be used."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        raise MissingModelError(f"no expression CNN at {p}") from None
    with _OWN_LOCK:
        if key not in _OWN:
            def load(p=p):
                from ..expression import load_expression

                try:
                    return load_expression(p)
                except Exception as err:  # a damaged or foreign file: the face is reported absent, with why
                    return MissingModelError(f"{p} is not a usable expression CNN ({err})")
            _OWN[key] = Lazy(load)
        lazy = _OWN[key]
    net = lazy.get()
    if isinstance(net, MissingModelError):
        raise net
    return net


def as_rgb_uint8(frame) -> np.ndarray:
    """RGB uint8 (H, W, 3) from RGB/RGBA/grey arrays, uint8 or float in [0, 1]."""
    x = np.asarray(frame)
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f"a frame must be (H, W), (H, W, 3) or (H, W, 4), got {x.shape}")
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    x = x[:, :, :3]
    if x.dtype != np.uint8:
        x = np.nan_to_num(x.astype(np.float32))
        x = x * 255.0 if x.max(initial=0) <= 1.0 else x
        x = np.clip(x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def head_pose(matrix) -> tuple[float, float, float]:
    """Yaw, pitch, roll (radians) from MediaPipe's 4x4 facial transformation matrix."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    yaw = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    pitch = math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return yaw, pitch, roll


class FaceEncoder(Encoder):
    modality = "vision"
    dim = N_BLENDSHAPES + len(POSE) + len(FER_CLASSES)

    def __init__(self, *, max_side: int = 960, pad_retry: bool = True, expression: str | Path | None = None, keep_crop: bool = False):
        """``expression``: the expression CNN's weights (:mod:`mmdemo.expression`, trained here on
        FER-2013 train); None reads with fer's CNN. ``keep_crop``: the grey crop the CNN read goes
        into the result's info (``crop``, uint8), for building training data."""
        self.max_side = max_side
        self.pad_retry = pad_retry
        self.expression = Path(expression) if expression is not None else None
        self.keep_crop = keep_crop
        self._net = None  # the own CNN once loaded: no file check per frame

    def _expression_model(self):
        if self.expression is None:
            return _FER.get()
        if self._net is None:
            self._net = _own_cnn(self.expression)
        return self._net

    def warmup(self) -> None:
        _LANDMARKER.get()
        self._expression_model()

    def feature_names(self) -> list[str]:
        return list(BLENDSHAPES) + [f"head_{p}" for p in POSE] + [f"fer_{c}" for c in FER_CLASSES]

    def _detect(self, rgb: np.ndarray):
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        with _LOCK:
            return _LANDMARKER.get().detect(image)

    def encode(self, frame) -> EncoderResult:
        t0 = time.perf_counter()
        try:
            rgb = as_rgb_uint8(frame)
        except ValueError as err:
            return EncoderResult.absent(self.modality, f"unusable frame: {err}")
        h0, w0 = rgb.shape[:2]
        if min(h0, w0) < MIN_SIDE:
            return EncoderResult.absent(self.modality, f"frame too small ({w0}x{h0})")
        if max(h0, w0) > MAX_ASPECT * min(h0, w0):  # enlarged for detection, a 16x4000 strip would pass the face model's image size limit (and abort the process)
            return EncoderResult.absent(self.modality, f"unusable frame: {w0}x{h0} is too narrow to hold a face")
        grey_full = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if float(grey_full.mean()) < DARK:
            return EncoderResult.absent(self.modality, "the camera delivers black frames", brightness=float(grey_full.mean()))
        scale = min(1.0, self.max_side / max(h0, w0))
        if min(h0, w0) < UPSCALE_BELOW:
            scale = 2 * UPSCALE_BELOW / min(h0, w0)
        small = rgb if scale == 1 else cv2.resize(rgb, (round(w0 * scale), round(h0 * scale)), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        try:
            result = self._detect(small)
        except MissingModelError as err:
            return EncoderResult.absent(self.modality, f"face model unavailable ({err})")
        offset, sh, sw = 0, small.shape[0], small.shape[1]
        if not result.face_landmarks and self.pad_retry:
            offset = round(0.3 * max(sh, sw))
            padded = cv2.copyMakeBorder(small, offset, offset, offset, offset, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            result = self._detect(padded)
        if not result.face_landmarks:
            return EncoderResult.absent(self.modality, "no face in the frame", ms=1000 * (time.perf_counter() - t0))
        # boxes in the coordinates of the original frame
        boxes = []
        for lms in result.face_landmarks:
            pts = np.array([(p.x, p.y) for p in lms])
            ph, pw = sh + 2 * offset, sw + 2 * offset
            x0, y0 = (pts.min(axis=0) * (pw, ph) - offset) / scale
            x1, y1 = (pts.max(axis=0) * (pw, ph) - offset) / scale
            boxes.append((max(0.0, x0), max(0.0, y0), min(float(w0), x1), min(float(h0), y1)))
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        k = int(np.argmax(areas))
        box = boxes[k]
        blend = np.array([c.score for c in result.face_blendshapes[k]], dtype=np.float32)
        if len(blend) != N_BLENDSHAPES:
            raise RuntimeError(f"the face model returned {len(blend)} blendshapes, expected {N_BLENDSHAPES}")
        pose = np.array(head_pose(result.facial_transformation_matrixes[k]), dtype=np.float32)
        crop = expression_crop(grey_full, box)
        try:
            probs = self._expression(crop)
        except MissingModelError as err:
            return EncoderResult.absent(self.modality, f"face model unavailable ({err})")
        feature = np.concatenate([blend, pose, probs]).astype(np.float32)
        notes = [f"{len(boxes)} faces in view: using the largest"] if len(boxes) > 1 else []
        info = {
            "box": tuple(int(round(v)) for v in box),
            "faces": len(boxes),
            "expression": FER_CLASSES[int(np.argmax(probs))],
            "expression_probs": {c: float(p) for c, p in zip(FER_CLASSES, probs)},
            "smile": float((blend[_SMILE[0]] + blend[_SMILE[1]]) / 2),
            "notes": notes,
            **({"crop": crop} if self.keep_crop else {}),
            "ms": 1000 * (time.perf_counter() - t0),
        }
        return EncoderResult(self.modality, feature, "", info)

    def _expression(self, crop: np.ndarray | None) -> np.ndarray:
        """The 7 expression probabilities of the face crop (uniform when the crop is empty)."""
        if crop is None:
            return np.full(len(FER_CLASSES), 1 / len(FER_CLASSES), np.float32)
        if self.expression is not None:
            from ..expression import predict_proba, to_input

            return predict_proba(self._expression_model(), to_input(crop))[0].astype(np.float32)
        # fer's preprocessing: the 64x64 grey crop scaled to [-1, 1]
        x = ((crop.astype(np.float32) / 255.0) - 0.5) * 2.0
        with _LOCK:
            it = _FER.get()
            it.set_tensor(it.get_input_details()[0]["index"], x[None, :, :, None])
            it.invoke()
            out = it.get_tensor(it.get_output_details()[0]["index"])[0].astype(np.float32)
        total = float(out.sum())
        return out / total if total > 0 else np.full(len(FER_CLASSES), 1 / len(FER_CLASSES), np.float32)


def expression_crop(grey: np.ndarray, box) -> np.ndarray | None:
    """What an expression CNN reads: a square around the face box with a 20% margin (cut at the
    frame's edges), grey uint8, 64x64; None when nothing is left."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * 1.2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    crop = grey[b : int(cy + side / 2), a : int(cx + side / 2)]
    if crop.size == 0:
        return None
    return cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)
