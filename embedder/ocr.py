"""On-screen text: PP-OCR (rapidocr's ONNX det + rec models) over a few frames, lines de-duplicated across frames.

Detection runs over all frames of many clips in shape-grouped batches and recognition over all new text boxes in
one batched call; frames near-identical to the previous read frame, and boxes unchanged since it, are not re-read.
The graphs run in onnxruntime, or converted to torch modules by onnx2torch (`ocr.engine`): GPU OCR where only a
CPU onnxruntime is installed.
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from embedder.cards import ModelCard
from embedder.config import OcrConfig
from embedder.types import ModelUnavailableError, OcrLine, OcrResult

log = logging.getLogger(__name__)

Clip = tuple[np.ndarray, list[float]]


@dataclass
class _Frame:
    """One frame of one clip: where its boxes' readings come from (`same_as`: a skipped frame's source frame)."""

    clip: int
    t: float
    image: np.ndarray | None  # BGR; None once the frame is skipped as identical
    gray: np.ndarray | None = None
    same_as: int | None = None
    gated: bool = False  # the text gate found no text: the full-size detector skips it
    quads: list[np.ndarray] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    reading: list[int] = field(default_factory=list)  # per box: index into the recognition results


@dataclass
class _Line:
    key: str
    text: str
    confidence: float
    first_s: float
    last_s: float


def _signature(gray: np.ndarray, block: int) -> np.ndarray:
    """Block means of a grayscale image: cheap to compare, robust to codec noise, sensitive to a changed glyph."""
    h, w = gray.shape[:2]
    return cv2.resize(gray, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA).astype(np.int16)


def _same(a: np.ndarray, b: np.ndarray, max_diff: int) -> bool:
    return a.shape == b.shape and int(np.abs(a - b).max()) <= max_diff


def _bbox(quad: np.ndarray) -> tuple[float, float, float, float]:
    return float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, ax1, ay1 = _bbox(a)
    bx0, by0, bx1, by1 = _bbox(b)
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _reading_order(quads: list[np.ndarray]) -> list[int]:
    """Top-to-bottom rows (a box joins a row when its centre is within half its height), left-to-right in a row."""
    rows: list[tuple[float, list[int]]] = []
    for i in sorted(range(len(quads)), key=lambda i: (_bbox(quads[i])[1], _bbox(quads[i])[0])):
        _, top, _, bottom = _bbox(quads[i])
        centre = (top + bottom) / 2
        if rows and abs(centre - rows[-1][0]) <= (bottom - top) / 2:
            rows[-1][1].append(i)
        else:
            rows.append((centre, [i]))
    return [i for _, row in rows for i in sorted(row, key=lambda i: _bbox(quads[i])[0])]


def _order_clockwise(pts: np.ndarray) -> np.ndarray:
    """Quad corners as top-left, top-right, bottom-right, bottom-left (what the crop's warp expects)."""
    xs = pts[np.argsort(pts[:, 0])]
    left, right = xs[:2][np.argsort(xs[:2, 1])], xs[2:][np.argsort(xs[2:, 1])]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def _crop(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective-rectified crop of one text box (PaddleOCR's get_rotate_crop_image)."""
    w = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    h = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    out = cv2.warpPerspective(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(out) if out.shape[0] >= 1.5 * out.shape[1] else out


def normalize_text(text: str) -> str:
    """Case-, punctuation- and space-insensitive form of a line, the key lines are de-duplicated on.

    Spaces are dropped because PP-OCR's recognizer often omits them in all-caps Latin lines."""
    return re.sub(r"[\W_]+", "", text.casefold())


def _engine(requested: str, device: str, ort_providers: list[str]) -> str:
    """`ocr.engine` resolved: auto → torch on cuda when onnxruntime has no CUDA provider and onnx2torch imports."""
    if requested != "auto":
        return requested
    if device != "cuda" or "CUDAExecutionProvider" in ort_providers:
        return "onnxruntime"
    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        return "onnxruntime"
    return "torch"


def _torch_graph(model: Any, device: str, dtype: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX graph (`onnx.ModelProto`, edited here) converted to a torch module by onnx2torch, as numpy -> numpy.

    Two fixes make PP-OCR's paddle2onnx graphs convertible: their weights are Constant nodes, which become
    initializers (onnx2torch reads conv and batch-norm weights only from those); and the rank of three conv
    outputs of the recognizer is lost behind a Reshape whose shape the graph computes, so shape inference leaves
    it unknown and onnx2torch cannot pick BatchNorm1d/2d: a conv output gets its weight's rank."""
    import onnx
    import torch
    from onnx2torch import convert

    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    model = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in model.graph.value_info if v.type.tensor_type.HasField("shape")}
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] not in known and node.input[1] in ranks:
            rank = ranks[node.input[1]]
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, [None] * rank)
            )
    module = convert(model).eval()
    if dtype == "float16":
        # Batch norm folded into its conv first: in fp16 a detector conv output near 1.8e4 minus a running mean of
        # the same size lost every digit, and the probability map came out all zero (test_ocr float16 test).
        _fold_batch_norms(module)
    module = module.to(device=device, dtype=getattr(torch, dtype))
    # onnx2torch's Slice indexes with a list of slices (deprecated by torch, still the same result: the engine
    # test compares against onnxruntime); the warning would print on the first recognizer call of every process.
    warnings.filterwarnings(
        "ignore", message="Using a non-tuple sequence for multidimensional indexing", module=r"onnx2torch\."
    )

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device=device, dtype=getattr(torch, dtype))).float().cpu().numpy()

    return run


def _fold_batch_norms(gm: Any) -> None:
    """Fold each BatchNorm2d into the Conv2d feeding only it, in place, in onnx2torch's fx graph."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        src = node.args[0] if bn is not None and node.args else None
        conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        if not isinstance(bn, torch.nn.BatchNorm2d) or not isinstance(conv, torch.nn.Conv2d) or len(src.users) != 1:
            continue
        _set_module(gm, src.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _set_module(root: Any, dotted: str, module: Any) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class OcrReader:
    """PP-OCR detection + recognition loaded once (onnxruntime sessions or converted torch modules, `ocr.engine`);
    `read` / `read_batch` take uint8 RGB T×H×W×3 frames."""

    def __init__(
        self,
        card: ModelCard,
        weights: Path,
        cfg: OcrConfig,
        device: str = "cpu",
        threads: int = 0,
        *,
        skip_identical: bool = True,
        identical_max_diff: int = 6,
        box_max_diff: int = 40,
        dedup_similarity: float = 0.8,
        min_chars: int = 2,
    ) -> None:
        self.card = card
        self.cfg = cfg
        self.skip_identical = skip_identical
        self.identical_max_diff = identical_max_diff
        # 4-px block means of a static line's box moved by <= 25 levels with the background moving behind it, and
        # by >= 117 when one glyph changed (test_ocr's frames), so 40 keeps a reused reading from going stale.
        self.box_max_diff = box_max_diff
        self.dedup_similarity = dedup_similarity
        # One-character "lines" were the only false positives on the sample clips (a "1" and a "0" on backgrounds).
        self.min_chars = min_chars
        p = card.params
        self._det_max_side = int(p.get("det_max_side", 960))
        self._rec_h, self._rec_w = int(p.get("rec_height", 48)), int(p.get("rec_width", 320))
        self._signature_block = int(p.get("signature_block", 8))
        charset = self._load_engine(weights, device, threads)
        self._post, self._decode = self._postprocessors(charset)
        # Work done by the last read/read_batch: what the gate and the skip-identical and box-reuse shortcuts saved.
        self.stats: dict[str, int] = {}

    def _load_engine(self, weights: Path, device: str, threads: int) -> list[str]:
        """Detector and recognizer on the resolved `ocr.engine`; returns the recognizer's character set."""
        import onnxruntime as ort

        self.engine = _engine(self.cfg.engine, device, ort.get_available_providers())
        if self.engine == "torch":
            return self._load_torch(weights, device)
        self._load_onnxruntime(ort, self.card, weights, device, threads)
        self.providers = self._det.get_providers()
        return self._rec.get_modelmeta().custom_metadata_map["character"].splitlines()

    def _load_torch(self, weights: Path, device: str) -> list[str]:
        """The ONNX graphs as torch modules (onnx2torch), fp16 on cuda unless `ocr.torch_dtype` says otherwise."""
        try:
            import onnx
            import onnx2torch  # noqa: F401
        except ImportError as e:
            raise ModelUnavailableError(
                "not_installed", "ocr.engine 'torch' needs onnx and onnx2torch: pip install 'reelvec[gpu]'"
            ) from e
        p = self.card.params
        try:
            det, rec = onnx.load(str(weights / p["det_model"])), onnx.load(str(weights / p["rec_model"]))
        except Exception as e:  # protobuf's DecodeError on a corrupt file
            raise ModelUnavailableError(
                "corrupt", f"model '{self.card.id}' files do not load: run `reelvec models verify`"
            ) from e
        charset = {m.key: m.value for m in rec.metadata_props}["character"].splitlines()
        dtype = self.cfg.torch_dtype
        if dtype == "auto":
            dtype = "float16" if device == "cuda" else "float32"
        self._run_det, self._run_rec = _torch_graph(det, device, dtype), _torch_graph(rec, device, dtype)
        self.providers, self.torch_dtype = [f"torch:{device}"], dtype
        return charset

    def _postprocessors(self, charset: list[str]) -> tuple[Any, Any]:
        """rapidocr's DB box extraction (card thresholds) and CTC decoding over the recognizer's characters."""
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        p = self.card.params
        post = DBPostProcess(
            thresh=float(p.get("det_thresh", 0.3)),
            box_thresh=float(p.get("det_box_thresh", 0.5)),
            max_candidates=1000,
            unclip_ratio=float(p.get("det_unclip_ratio", 1.6)),
            use_dilation=True,
            score_mode="fast",
        )
        return post, CTCLabelDecode(character=charset)

    def _load_onnxruntime(self, ort: Any, card: ModelCard, weights: Path, device: str, threads: int) -> None:
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning(
                    "OCR on CPU: onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu, or onnx2torch "
                    "for ocr.engine auto/torch)"
                )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: OCR shares the CPU with decode workers wherever it runs,
        # and a spinning thread holds a core that a decoder could use.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        # Inputs change shape every call (frame sizes, crop widths); the arena would keep the largest forever.
        opts.enable_cpu_mem_arena = False
        p = card.params
        try:
            self._det = ort.InferenceSession(str(weights / p["det_model"]), sess_options=opts, providers=providers)
            self._rec = ort.InferenceSession(str(weights / p["rec_model"]), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors on a corrupt file
            raise ModelUnavailableError(
                "corrupt", f"model '{card.id}' files do not load: run `reelvec models verify`"
            ) from e
        det_in, rec_in = self._det.get_inputs()[0].name, self._rec.get_inputs()[0].name
        self._run_det = lambda x: self._det.run(None, {det_in: x})[0]
        self._run_rec = lambda x: self._rec.run(None, {rec_in: x})[0]

    def read(self, frames: np.ndarray | None, timestamps_s: list[float]) -> OcrResult:
        """On-screen text of one clip's frames (timestamps in seconds, one per frame)."""
        return self.read_batch([(frames, timestamps_s)])[0] if frames is not None else OcrResult.empty()

    def read_batch(self, clips: list[Clip]) -> list[OcrResult]:
        """On-screen text of many clips: one detection pass over all their frames, one recognition pass."""
        frames = self._plan(clips)
        if self.cfg.text_gate:
            self._gate([f for f in frames if f.image is not None])
        self._detect([f for f in frames if f.image is not None and not f.gated])
        crops = self._match_boxes(frames)
        readings = self._recognize(crops)
        self.stats = {
            "frames": len(frames),
            "frames_read": sum(f.image is not None for f in frames),
            "frames_gated": sum(f.gated for f in frames),
            "boxes": sum(len(f.reading) for f in frames),
            "boxes_recognized": len(crops),
        }
        return [self._assemble([f for f in frames if f.clip == c], frames, readings) for c in range(len(clips))]

    def _plan(self, clips: list[Clip]) -> list[_Frame]:
        """Frames in clip and time order; one near-identical to the previous read frame of its clip is skipped."""
        out: list[_Frame] = []
        for c, (arr, ts) in enumerate(clips):
            if arr is None or len(arr) == 0:
                continue
            if arr.ndim != 4 or arr.shape[-1] != 3 or len(ts) != len(arr):
                raise ValueError(f"frames must be T×H×W×3 with one timestamp each; got {arr.shape}, {len(ts)} ts")
            prev: tuple[int, np.ndarray] | None = None
            for i in np.argsort(np.asarray(ts, dtype=np.float64), kind="stable"):
                rgb = np.ascontiguousarray(arr[i])
                gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
                sig = _signature(gray, self._signature_block)
                if self.skip_identical and prev is not None and _same(sig, prev[1], self.identical_max_diff):
                    out.append(_Frame(c, float(ts[i]), None, same_as=prev[0]))
                    continue
                # PP-OCR was trained on BGR input (cv2.imread order).
                out.append(_Frame(c, float(ts[i]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), gray=gray))
                prev = (len(out) - 1, sig)
        return out

    def _det_input(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Frame at its own size times `scale` (sides rounded to multiples of 32), downscaled past `det_max_side`."""
        h, w = image.shape[:2]
        ratio = min(1.0, self._det_max_side / max(h, w)) * scale
        rh, rw = max(32, round(h * ratio / 32) * 32), max(32, round(w * ratio / 32) * 32)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        x = cv2.resize(image, (rw, rh), interpolation=interpolation).astype(np.float32) * (2 / 255.0) - 1.0
        return x.transpose(2, 0, 1)  # mean = std = 0.5

    def _gate(self, frames: list[_Frame]) -> None:
        """Mark frames whose probability map at `ocr.gate_scale` has under `gate_min_pixels` text pixels.

        The detector's own map at a third of the size costs about a ninth of a full pass; on the samples every
        overlay frame had >= 698 such pixels and no text-free frame had any (bench/ocr.py prints both)."""
        thresh = float(self.card.params.get("det_thresh", 0.3))
        for group in self._by_shape(frames, self.cfg.gate_scale):
            for s in range(0, len(group), self.cfg.batch_size):
                chunk = group[s : s + self.cfg.batch_size]
                maps = self._run_det(np.stack([x for _, x in chunk]))
                for k, (f, _) in enumerate(chunk):
                    f.gated = int((maps[k] > thresh).sum()) < self.cfg.gate_min_pixels

    def _by_shape(self, frames: list[_Frame], scale: float = 1.0) -> list[list[tuple[_Frame, np.ndarray]]]:
        """Detector inputs grouped by shape, so that each group runs as batches."""
        groups: dict[tuple[int, ...], list[tuple[_Frame, np.ndarray]]] = {}
        for f in frames:
            assert f.image is not None
            x = self._det_input(f.image, scale)
            groups.setdefault(x.shape, []).append((f, x))
        return list(groups.values())

    def _detect(self, frames: list[_Frame]) -> None:
        """Text quads per frame, in reading order; frames of one input shape run as one batch."""
        for group in self._by_shape(frames):
            for s in range(0, len(group), self.cfg.batch_size):
                chunk = group[s : s + self.cfg.batch_size]
                maps = self._run_det(np.stack([x for _, x in chunk]))
                for k, (f, _) in enumerate(chunk):
                    assert f.image is not None
                    h, w = f.image.shape[:2]
                    boxes, _scores = self._post(maps[k : k + 1], (h, w))
                    quads = []
                    for b in boxes:
                        q = _order_clockwise(np.asarray(b, dtype=np.float32))
                        q[:, 0], q[:, 1] = q[:, 0].clip(0, w - 1), q[:, 1].clip(0, h - 1)
                        if np.linalg.norm(q[0] - q[1]) > 3 and np.linalg.norm(q[0] - q[3]) > 3:
                            quads.append(q)
                    f.quads = [quads[i] for i in _reading_order(quads)]
                    f.crops = [_crop(f.image, q) for q in f.quads]

    def _match_boxes(self, frames: list[_Frame]) -> list[np.ndarray]:
        """Crops to recognise: a box at the same place with the same pixels as in the previous read frame reuses it."""
        crops: list[np.ndarray] = []
        prev: _Frame | None = None
        for f in frames:
            if f.image is None:
                continue
            if prev is not None and prev.clip != f.clip:
                prev = None
            for q, crop in zip(f.quads, f.crops, strict=True):
                src = self._unchanged_box(prev, f, q) if self.skip_identical else None
                if src is None:
                    crops.append(crop)
                    src = len(crops) - 1
                f.reading.append(src)
            prev = f
        return crops

    def _unchanged_box(self, prev: _Frame | None, f: _Frame, quad: np.ndarray) -> int | None:
        """The reading of a box of `prev` at the same place whose pixels there are the same (a static overlay)."""
        if prev is None or prev.gray is None or f.gray is None or prev.gray.shape != f.gray.shape:
            return None
        for pq, src in zip(prev.quads, prev.reading, strict=True):
            if _iou(pq, quad) < 0.8:
                continue
            # Compare the same pixels of both frames (the union of the boxes), not the two crops: box corners
            # jitter by a pixel between frames, and resampled crops of the same glyphs then differ at every edge.
            bx0, by0 = (int(min(a, b)) for a, b in zip(_bbox(pq)[:2], _bbox(quad)[:2], strict=True))
            bx1, by1 = (int(max(a, b)) + 1 for a, b in zip(_bbox(pq)[2:], _bbox(quad)[2:], strict=True))
            a, b = prev.gray[by0:by1, bx0:bx1], f.gray[by0:by1, bx0:bx1]
            if _same(_signature(a, 4), _signature(b, 4), self.box_max_diff):
                return src
        return None

    def _recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) per crop, batched by padded width.

        Each crop is padded to a width set by its own length (a multiple of 32, at least `rec_width`), not to the
        widest crop of its batch as PaddleOCR does: that made a clip's readings depend on which other clips shared
        the batch (confidence moved by up to 0.03 and a stray "0" line appeared on a sample clip), and an item must
        read the same alone (upload) as in a backfill batch."""
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        widths = [max(self._rec_w, -(-int(np.ceil(self._rec_h * c.shape[1] / c.shape[0])) // 32) * 32) for c in crops]
        groups: dict[int, list[int]] = {}
        for i, width in enumerate(widths):
            groups.setdefault(width, []).append(i)
        for width, members in sorted(groups.items()):
            for s in range(0, len(members), self.cfg.batch_size):
                idx = members[s : s + self.cfg.batch_size]
                batch = np.zeros((len(idx), 3, self._rec_h, width), dtype=np.float32)
                for k, i in enumerate(idx):
                    h, w = crops[i].shape[:2]
                    rw = min(width, int(np.ceil(self._rec_h * w / h)))
                    x = cv2.resize(crops[i], (rw, self._rec_h)).astype(np.float32) * (2 / 255.0) - 1.0
                    batch[k, :, :, :rw] = x.transpose(2, 0, 1)
                preds = self._run_rec(batch)
                for k, (text, conf) in enumerate(self._decode(preds)):
                    out[idx[k]] = (text.strip(), float(conf))
        return out

    def _assemble(
        self, clip_frames: list[_Frame], frames: list[_Frame], readings: list[tuple[str, float]]
    ) -> OcrResult:
        """Confident lines, de-duplicated by fuzzy match on normalized text, in order of first appearance."""
        lines: list[_Line] = []
        for f in clip_frames:
            src = frames[f.same_as] if f.same_as is not None else f
            for r in src.reading:
                text, conf = readings[r]
                key = normalize_text(text)
                if conf < self.cfg.min_confidence or len(key) < self.min_chars:
                    continue
                line = next((ln for ln in lines if self._similar(ln.key, key)), None)
                if line is None:
                    if len(lines) < self.cfg.max_lines:
                        lines.append(_Line(key, text, conf, f.t, f.t))
                    continue
                line.last_s = max(line.last_s, f.t)
                if conf > line.confidence:  # keep the clearest reading of a line seen several times
                    line.key, line.text, line.confidence = key, text, conf
        return OcrResult(tuple(OcrLine(ln.text, ln.confidence, ln.first_s, ln.last_s) for ln in lines))

    def _similar(self, a: str, b: str) -> bool:
        return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= self.dedup_similarity
