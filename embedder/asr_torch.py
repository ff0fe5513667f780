"""Whisper on torch (transformers' WhisperForConditionalGeneration) from the card's CTranslate2 weights.

The GPU image has CUDA 13 while the CTranslate2 wheel's CUDA build wants libcublas.so.12, so GPU ASR runs the
same shipped tiny.en weights in torch: model.bin is parsed (CTranslate2's binary format, `model_spec._serialize`),
renamed to the transformers layout once and cached on disk. `TorchWhisperModel` is faster-whisper's WhisperModel
with the CTranslate2 runtime swapped for torch (encode, greedy generate with Whisper's timestamp rules, word
alignment), so segmentation, VAD handling and word timestamps stay faster-whisper's own code on either backend.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # CTranslate2 DataType ids (5 = bf16)
_NEG_INF = float("-inf")
_SIDES = ("encoder", "decoder")


# -- CTranslate2 model.bin → transformers ---------------------------------------------------------------------------


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin by name (aliases resolved), as `model_spec._serialize` wrote them."""
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = bytes(buf[pos : pos + n - 1]).decode()
        pos += n
        return text

    version = take("I")
    if version < 5:
        raise ValueError(f"CTranslate2 binary version {version} is not supported")
    string(), take("I")  # spec name, revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _CT2_DTYPES[take("B")]
        nbytes = take("I")
        if dtype is None:
            raise ValueError(f"bfloat16 variable {name} is not supported")
        out[name] = np.frombuffer(buf[pos : pos + nbytes], dtype=dtype).reshape(shape).copy()
        pos += nbytes
    for _ in range(take("I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def _split_rows(w: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(w, parts, axis=0))


def _attention(ct2: dict[str, np.ndarray], src: str, dst: str, cross: bool) -> dict[str, np.ndarray]:
    """One attention block: CTranslate2 fuses q/k/v (self) or k/v (cross) in one linear; Whisper's k has no bias."""
    sd: dict[str, np.ndarray] = {}
    if cross:
        sd[f"{dst}.q_proj.weight"] = ct2[f"{src}/linear_0/weight"]
        sd[f"{dst}.q_proj.bias"] = ct2[f"{src}/linear_0/bias"]
        fused, out, names = "linear_1", "linear_2", ("k", "v")
    else:
        fused, out, names = "linear_0", "linear_1", ("q", "k", "v")
    ws = _split_rows(ct2[f"{src}/{fused}/weight"], len(names))
    bs = _split_rows(ct2[f"{src}/{fused}/bias"], len(names))
    for n, w, b in zip(names, ws, bs, strict=True):
        sd[f"{dst}.{n}_proj.weight"] = w
        if n != "k":
            sd[f"{dst}.{n}_proj.bias"] = b
    sd[f"{dst}.out_proj.weight"], sd[f"{dst}.out_proj.bias"] = ct2[f"{src}/{out}/weight"], ct2[f"{src}/{out}/bias"]
    return sd


def _norm(ct2: dict[str, np.ndarray], src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": ct2[f"{src}/gamma"], f"{dst}.bias": ct2[f"{src}/beta"]}


def _layer(ct2: dict[str, np.ndarray], side: str, i: int) -> dict[str, np.ndarray]:
    src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    sd = _attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", cross=False)
    sd |= _norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
    if side == "decoder":
        sd |= _attention(ct2, f"{src}/attention", f"{dst}.encoder_attn", cross=True)
        sd |= _norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
    for j, name in enumerate(("fc1", "fc2")):
        sd[f"{dst}.{name}.weight"] = ct2[f"{src}/ffn/linear_{j}/weight"]
        sd[f"{dst}.{name}.bias"] = ct2[f"{src}/ffn/linear_{j}/bias"]
    sd |= _norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    return sd


def ct2_to_hf(ct2: dict[str, np.ndarray]) -> tuple[Any, dict[str, torch.Tensor]]:
    """transformers WhisperConfig and state dict holding the same weights as a CTranslate2 WhisperSpec."""
    from transformers import WhisperConfig

    n_enc, n_dec = (len({k.split("/")[1] for k in ct2 if re.match(rf"{side}/layer_\d+/", k)}) for side in _SIDES)
    vocab, d_model = ct2["decoder/embeddings/weight"].shape
    heads = int(ct2["encoder/num_heads"])
    sd: dict[str, np.ndarray] = {}
    for i in range(n_enc):
        sd |= _layer(ct2, "encoder", i)
    for i in range(n_dec):
        sd |= _layer(ct2, "decoder", i)
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        sd |= _norm(ct2, f"{side}/layer_norm", f"model.{side}.layer_norm")
    for c in ("conv1", "conv2"):
        for part in ("weight", "bias"):
            sd[f"model.encoder.{c}.{part}"] = ct2[f"encoder/{c}/{part}"]
    sd["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    sd["proj_out.weight"] = ct2["decoder/projection/weight"]
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(ct2["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads,
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=True,
    )
    return config, {k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}


def load_hf_whisper(model_dir: Path, cache_dir: Path, key: str, device: str, dtype: torch.dtype) -> Any:
    """The card's Whisper as a transformers model: converted from model.bin once, then read from `cache_dir/key`."""
    from transformers import WhisperForConditionalGeneration

    target = cache_dir / key
    if not (target / "config.json").is_file():
        config, state = ct2_to_hf(read_ct2(model_dir / "model.bin"))
        model = WhisperForConditionalGeneration(config)
        model.load_state_dict(state, strict=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        model.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a concurrent loader sees the whole folder or none
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is the same weights
        log.info("converted %s to the transformers layout in %s", model_dir / "model.bin", target)
    # Fused attention on the GPU; eager on the CPU, where it reproduces CTranslate2's float32 tokens exactly (tested).
    attn = "sdpa" if device.startswith("cuda") else "eager"
    model = WhisperForConditionalGeneration.from_pretrained(target, attn_implementation=attn, dtype=dtype)
    return model.to(device).eval()


# -- the CTranslate2 Whisper runtime, in torch ----------------------------------------------------------------------


@dataclass
class GenerationResult:
    """What faster-whisper reads from `ctranslate2.models.WhisperGenerationResult`."""

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float


@dataclass
class AlignmentResult:
    """What faster-whisper reads from `ctranslate2.models.WhisperAlignmentResult`."""

    alignments: list[tuple[int, int]]
    text_token_probs: list[float]


@dataclass(frozen=True)
class _Vocab:
    eot: int
    sot: int
    no_speech: int
    no_timestamps: int
    suppress: tuple[int, ...]
    suppress_begin: tuple[int, ...]
    alignment_heads: tuple[tuple[int, int], ...]


class TorchWhisper:
    """The parts of `ctranslate2.models.Whisper` faster-whisper calls, on a transformers model (greedy only)."""

    is_multilingual = False

    def __init__(self, hf: Any, vocab: _Vocab) -> None:
        self.hf = hf
        self.vocab = vocab
        self.n_mels = int(hf.config.num_mel_bins)
        self.device = str(next(hf.parameters()).device)
        self.dtype = next(hf.parameters()).dtype
        self.sync_every = 1 if self.device == "cpu" else 8
        self.windows = 0  # 30-s windows encoded so far (bench/asr.py reports windows/s)

    @torch.inference_mode()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(features))
        x = x.to(self.device, self.dtype)
        x = x if x.ndim == 3 else x[None]
        self.windows += x.shape[0]
        return self.hf.model.encoder(x).last_hidden_state

    @torch.inference_mode()
    def generate(self, encoder_output: torch.Tensor, prompts: list[list[int]], **options: Any) -> list:
        """Greedy decoding of each prompt; prompts of different lengths run one by one."""
        if options.get("beam_size", 1) != 1 or options.get("sampling_temperature", 0.0) not in (0.0, 1.0):
            raise ValueError("the torch Whisper backend decodes greedily (beam_size 1, temperature 0)")
        if len({len(p) for p in prompts}) > 1:
            return [self.generate(encoder_output[i : i + 1], [p], **options)[0] for i, p in enumerate(prompts)]
        return _Greedy(self, encoder_output, prompts, options).run()

    @torch.inference_mode()
    def align(
        self,
        encoder_output: torch.Tensor,
        start_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: Any,
        median_filter_width: int = 7,
    ) -> list[AlignmentResult]:
        """Token-to-frame alignment from the alignment heads' cross-attention and DTW (openai/whisper timing.py):
        one decoder pass and one DTW over every window of the batch."""
        from transformers.models.whisper.generation_whisper import _median_filter

        v = self.vocab
        frames = [num_frames] * len(text_tokens) if isinstance(num_frames, int) else list(num_frames)
        head = [*start_sequence, v.no_timestamps]
        longest = max(len(t) for t in text_tokens)
        ids = [head + t + [v.eot] * (longest - len(t) + 1) for t in text_tokens]
        enc = encoder_output if encoder_output.shape[0] == len(ids) else encoder_output.expand(len(ids), -1, -1)
        fused = self.hf.config._attn_implementation
        if fused != "eager":
            self.hf.set_attn_implementation("eager")  # attention weights are only returned by eager attention
        try:
            out = self.hf.model.decoder(
                input_ids=torch.tensor(ids, device=self.device),
                encoder_hidden_states=enc,
                output_attentions=True,
                use_cache=False,
            )
        finally:
            if fused != "eager":
                self.hf.set_attn_implementation(fused)
        s = len(head)
        logits = self.hf.proj_out(out.last_hidden_state[:, s - 1 : s - 1 + longest]).float()
        probs = logits[..., : v.eot].softmax(-1)
        picked = torch.tensor([t + [0] * (longest - len(t)) for t in text_tokens], device=probs.device)
        token_probs = probs.gather(-1, picked[..., None])[..., 0].tolist()
        heads = torch.stack([out.cross_attentions[layer][:, h] for layer, h in v.alignment_heads], 1).float()
        matrices = []
        for b, tokens in enumerate(text_tokens):  # tensor ops only: windows differ in tokens and frames
            n = len(tokens)
            w = heads[b, :, : s + n + 1, : frames[b] // 2]
            w = w / w.sum(-1, keepdim=True)  # softmax over the kept frames, as openai/whisper recomputes it
            std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
            w = _median_filter((w - mean) / std, median_filter_width)
            matrices.append(-w.mean(0)[s - 1 : s + n].double())
        paths = dtw_batch(_padded(matrices), [m.shape for m in matrices])
        return [
            AlignmentResult(list(zip(ti.tolist(), fi.tolist(), strict=True)), token_probs[b][: len(text_tokens[b])])
            for b, (ti, fi) in enumerate(paths)
        ]


def _padded(matrices: list[torch.Tensor]) -> np.ndarray:
    """Cost matrices of different shapes in one zero-padded (batch, rows, cols) array on the host."""
    rows, cols = max(m.shape[0] for m in matrices), max(m.shape[1] for m in matrices)
    out = torch.zeros(len(matrices), rows, cols, dtype=torch.float64, device=matrices[0].device)
    for b, m in enumerate(matrices):
        out[b, : m.shape[0], : m.shape[1]] = m
    return out.cpu().numpy()


def dtw_batch(cost: np.ndarray, shapes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dynamic time warping of every (rows, cols) cost matrix in `cost` at once: (text indices, time indices) each.

    The same recurrence and tie-breaking as transformers' `_dynamic_time_warping` (float32 running costs), swept
    over anti-diagonals so each step is one vector op across all matrices instead of a Python loop per cell.
    A matrix's cells depend only on cells above and left of them, so the zero padding never reaches its own path.
    """
    batch, n, m = cost.shape
    acc = np.full((batch, n + 1, m + 1), np.inf, dtype=np.float32)
    acc[:, 0, 0] = 0
    trace = np.full((batch, n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[:, i - 1, j - 1], acc[:, i - 1, j], acc[:, i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2)).astype(np.int8)
        acc[:, i, j] = cost[:, i - 1, j - 1] + np.where(t == 0, c0, np.where(t == 1, c1, c2))
        trace[:, i, j] = t
    trace[:, 0, :] = 2
    trace[:, :, 0] = 1
    i = np.array([r for r, _ in shapes])
    j = np.array([c for _, c in shapes])
    steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows = np.arange(batch)
    while True:
        live = (i > 0) | (j > 0)
        if not live.any():
            break
        steps.append((live, i - 1, j - 1))
        t = trace[rows, i, j]
        i = np.where(live & (t != 2), i - 1, i)
        j = np.where(live & (t != 1), j - 1, j)
    if not steps:
        return [(np.zeros(0, dtype=int), np.zeros(0, dtype=int)) for _ in range(batch)]
    live, ti, fi = (np.stack(x) for x in zip(*steps, strict=True))
    return [(ti[live[:, b], b][::-1], fi[live[:, b], b][::-1]) for b in range(batch)]


class _Greedy:
    """One batched greedy decode with Whisper's logit rules (suppression, timestamp pairing, initial timestamp).

    The rules are tensor ops over the whole batch (no per-sequence Python), so one call decodes many windows.
    """

    def __init__(self, model: TorchWhisper, enc: torch.Tensor, prompts: list[list[int]], options: dict[str, Any]):
        self.m, self.v = model, model.vocab
        self.enc = enc if enc.shape[0] == len(prompts) else enc.expand(len(prompts), -1, -1)
        self.prompts = prompts
        self.max_new = int(options.get("max_length", 448)) - len(prompts[0])
        self.timestamps = self.v.no_timestamps not in prompts[0]
        self.max_initial = options.get("max_initial_timestamp_index", 50)  # CTranslate2's default
        suppress = list(options.get("suppress_tokens") or [])
        if -1 in suppress:
            suppress = [t for t in suppress if t >= 0] + list(self.v.suppress)
        self.suppress = torch.tensor(sorted(set(suppress)), dtype=torch.long, device=model.device)
        self.suppress_blank = bool(options.get("suppress_blank", True))

    def _rules(self, logits: torch.Tensor, step: int, last: torch.Tensor, prev: torch.Tensor, top: torch.Tensor):
        """`last`/`prev`: each row's last two generated tokens (-1 before any); `top`: its last timestamp (-1: none)."""
        v, tb = self.v, self.v.no_timestamps + 1
        if self.suppress.numel():
            logits[:, self.suppress] = _NEG_INF
        if step == 0 and self.suppress_blank:
            logits[:, list(v.suppress_begin)] = _NEG_INF
        logits[:, v.no_timestamps] = _NEG_INF
        if not self.timestamps:
            logits[:, tb:] = _NEG_INF
            return logits
        cols = torch.arange(logits.shape[-1], device=logits.device)[None]
        is_stamp = cols >= tb
        last_ts = (last >= tb)[:, None]
        pair_open = last_ts & (prev < tb)[:, None] & (prev >= 0)[:, None]  # text then one timestamp
        # After a closed pair (or a lone first timestamp) text must follow; after text + timestamp, no more text.
        logits.masked_fill_(last_ts & ~pair_open & is_stamp, _NEG_INF)
        logits.masked_fill_(pair_open & (cols < v.eot), _NEG_INF)
        # Timestamps never go back; after a closing one the next segment may start at the same time.
        floor = torch.where(pair_open[:, 0], top, top + 1)[:, None]
        logits.masked_fill_((top >= 0)[:, None] & is_stamp & (cols < floor), _NEG_INF)
        if step == 0:
            logits[:, :tb] = _NEG_INF
            if self.max_initial is not None:
                logits[:, tb + self.max_initial + 1 :] = _NEG_INF
        logprobs = logits.float().log_softmax(-1)
        stamp_wins = logprobs[:, tb:].logsumexp(-1) > logprobs[:, :tb].max(-1).values
        logits.masked_fill_(stamp_wins[:, None] & ~is_stamp, _NEG_INF)  # a likely timestamp beats any text token
        return logits

    def run(self) -> list[GenerationResult]:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        dec, v, dev = self.m.hf.model.decoder, self.v, self.m.device
        batch, steps = len(self.prompts), max(self.max_new, 0)
        tb = v.no_timestamps + 1
        ids = torch.tensor(self.prompts, device=dev)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = torch.full((batch, steps), v.eot, dtype=torch.long, device=dev)
        last = prev = top = torch.full((batch,), -1, dtype=torch.long, device=dev)
        score = torch.zeros(batch, device=dev)
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        no_speech = torch.zeros(batch, device=dev)
        for step in range(steps):
            h = dec(input_ids=ids, encoder_hidden_states=self.enc, cache=cache, use_cache=True).last_hidden_state
            if step == 0:
                sot_at = self.prompts[0].index(v.sot)
                no_speech = self.m.hf.proj_out(h[:, sot_at]).float().softmax(-1)[:, v.no_speech]
            logits = self._rules(self.m.hf.proj_out(h[:, -1]).float(), step, last, prev, top)
            nxt = logits.argmax(-1)
            lp = logits.log_softmax(-1).gather(1, nxt[:, None])[:, 0]
            score += torch.where(done, 0.0, lp)  # the end-of-text token's log-prob counts, as in CTranslate2
            nxt = torch.where(done, v.eot, nxt)
            done = done | (nxt == v.eot)
            out[:, step] = nxt
            prev, last = last, nxt
            top = torch.where(nxt >= tb, nxt, top)
            # On a GPU one host sync every few steps (not every step) to stop once all rows ended.
            if step % self.m.sync_every == self.m.sync_every - 1 and bool(done.all()):
                break
            ids = nxt[:, None]
        rows, scores, probs = out.tolist(), score.tolist(), no_speech.tolist()
        results = []
        for row, s, p in zip(rows, scores, probs, strict=True):
            g = row[: row.index(v.eot)] if v.eot in row else row
            results.append(GenerationResult([g], [s / max(len(g), 1)], p))
        return results


# -- faster-whisper's WhisperModel on torch --------------------------------------------------------------------------


class TorchFeatures:
    """faster-whisper's log-mel extractor (same filters, same numbers) with the STFT done by torch on the device."""

    def __init__(self, base: Any, device: str) -> None:
        self.base = base
        self.device = device
        self.mel = torch.from_numpy(base.mel_filters).to(device)
        self.window = torch.hann_window(base.n_fft, periodic=True, device=device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)  # sampling_rate, chunk_length, nb_max_frames, time_per_frame, …

    def __call__(self, waveform: np.ndarray, padding: int = 160, chunk_length: int | None = None) -> np.ndarray:
        if chunk_length is not None:
            self.base.n_samples = chunk_length * self.base.sampling_rate
            self.base.nb_max_frames = self.base.n_samples // self.base.hop_length
        x = torch.as_tensor(np.asarray(waveform, dtype=np.float32), device=self.device)
        if padding:
            x = torch.nn.functional.pad(x, (0, padding))
        spec = torch.stft(x, self.base.n_fft, self.base.hop_length, window=self.window, return_complex=True)
        power = spec[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.mel @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).cpu().numpy()

    def batch(self, waves: list[np.ndarray], padding: int = 160) -> tuple[torch.Tensor, list[int]]:
        """Log-mel of several waveforms in one STFT on the device: (batch, mels, frames) and each one's own frames.

        Each row is normalised by its own loudest frame, as `__call__` does for one waveform; the zero padding past
        a shorter waveform is what `padding` adds anyway, so its own frames are unchanged.
        """
        hop = self.base.hop_length
        lengths = [int(w.size) + padding for w in waves]
        host = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        for b, w in enumerate(waves):
            host[b, : w.size] = w
        x = torch.from_numpy(host).to(self.device)
        spec = torch.stft(x, self.base.n_fft, hop, window=self.window, return_complex=True)
        log_spec = torch.clamp(self.mel @ spec[..., :-1].abs() ** 2, min=1e-10).log10()
        frames = [n // hop for n in lengths]
        valid = (
            torch.arange(log_spec.shape[-1], device=self.device)[None]
            < torch.tensor(frames, device=self.device)[:, None]
        )
        top = log_spec.masked_fill(~valid[:, None], _NEG_INF).amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, top - 8.0) + 4.0) / 4.0, frames


def build_torch_whisper(model_dir: Path, cache_dir: Path, key: str, device: str) -> Any:
    """faster-whisper's WhisperModel whose runtime is `TorchWhisper` (fp16 on cuda, fp32 on cpu)."""
    import tokenizers
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.utils import get_logger

    class TorchWhisperModel(WhisperModel):
        def __init__(self) -> None:  # WhisperModel.__init__ without the CTranslate2 runtime
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
            hf = load_hf_whisper(model_dir, cache_dir, key, device, dtype)
            self.logger = get_logger()
            self.source = model_dir
            self.hf_tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self.model = TorchWhisper(hf, _vocab(model_dir, self.hf_tokenizer))
            self.feat_kwargs = self._get_feature_kwargs(str(model_dir), None)
            self.feature_extractor = TorchFeatures(FeatureExtractor(**self.feat_kwargs), device)
            self.input_stride = 2
            self.num_samples_per_token = self.feature_extractor.hop_length * self.input_stride
            self.frames_per_second = self.feature_extractor.sampling_rate // self.feature_extractor.hop_length
            self.tokens_per_second = self.feature_extractor.sampling_rate // self.num_samples_per_token
            self.time_precision = 0.02
            self.max_length = 448
            self._aligned: list | None = None

        def encode(self, features: np.ndarray) -> torch.Tensor:
            return self.model.encode(features)

        def find_alignment(self, *args: Any, **kwargs: Any) -> list:
            # `add_word_timestamps_batch` hands each window its share of one batched alignment through here.
            return self._aligned if self._aligned is not None else super().find_alignment(*args, **kwargs)

        def add_word_timestamps_batch(
            self, windows: list[list[dict]], tokenizer: Any, encoder_output: torch.Tensor, frames: list[int],
            last_speech: list[float], punctuation: tuple[str, str],
        ) -> None:  # fmt: skip
            """faster-whisper's `add_word_timestamps` for many windows, their words aligned in one batched call."""
            tokens = [[t for seg in segs for t in seg["tokens"] if t < tokenizer.eot] for segs in windows]
            has = [k for k, t in enumerate(tokens) if t]
            aligned = (
                super().find_alignment(
                    tokenizer, [tokens[k] for k in has], encoder_output[has], [frames[k] for k in has]
                )
                if has
                else []
            )
            by_window = dict(zip(has, aligned, strict=True))
            try:
                for k, segs in enumerate(windows):
                    self._aligned = [by_window.get(k, [])]
                    self.add_word_timestamps([segs], tokenizer, None, frames[k], *punctuation, last_speech[k])
            finally:
                self._aligned = None

    return TorchWhisperModel()


def _vocab(model_dir: Path, tok: Any) -> _Vocab:
    cfg = json.loads((model_dir / "config.json").read_text())
    no_speech = tok.token_to_id("<|nospeech|>") or tok.token_to_id("<|nocaptions|>")
    return _Vocab(
        eot=tok.token_to_id("<|endoftext|>"),
        sot=tok.token_to_id("<|startoftranscript|>"),
        no_speech=no_speech,
        no_timestamps=tok.token_to_id("<|notimestamps|>"),
        suppress=tuple(cfg.get("suppress_ids", [])),
        suppress_begin=tuple(cfg.get("suppress_ids_begin", [])),
        alignment_heads=tuple(tuple(h) for h in cfg["alignment_heads"]),
    )
