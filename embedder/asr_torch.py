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
    model = WhisperForConditionalGeneration.from_pretrained(target, attn_implementation="eager", dtype=dtype)
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

    @torch.inference_mode()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(features), device=self.device).to(self.dtype)
        return self.hf.model.encoder(x if x.ndim == 3 else x[None]).last_hidden_state

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
        """Token-to-frame alignment from the alignment heads' cross-attention and DTW (openai/whisper timing.py)."""
        from transformers.models.whisper.generation_whisper import _dynamic_time_warping, _median_filter

        v = self.vocab
        frames = [num_frames] * len(text_tokens) if isinstance(num_frames, int) else list(num_frames)
        head = [*start_sequence, v.no_timestamps]
        longest = max(len(t) for t in text_tokens)
        ids = [head + t + [v.eot] * (longest - len(t) + 1) for t in text_tokens]
        enc = encoder_output if encoder_output.shape[0] == len(ids) else encoder_output.expand(len(ids), -1, -1)
        out = self.hf.model.decoder(
            input_ids=torch.tensor(ids, device=self.device),
            encoder_hidden_states=enc,
            output_attentions=True,
            use_cache=False,
        )
        logits = self.hf.proj_out(out.last_hidden_state).float()
        results = []
        for b, tokens in enumerate(text_tokens):
            n, s = len(tokens), len(head)
            probs = logits[b, s - 1 : s - 1 + n, : v.eot].softmax(-1)
            token_probs = probs[torch.arange(n), torch.tensor(tokens, dtype=torch.long, device=probs.device)].tolist()
            w = torch.stack([out.cross_attentions[layer][b, h] for layer, h in v.alignment_heads]).float()
            w = w[:, : s + n + 1, : frames[b] // 2]
            w = w / w.sum(-1, keepdim=True)  # softmax over the kept frames, as openai/whisper recomputes it
            std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
            w = _median_filter((w - mean) / std, median_filter_width)
            matrix = w.mean(0)[s - 1 : s + n]
            text_idx, time_idx = _dynamic_time_warping(-matrix.double().cpu().numpy())
            results.append(AlignmentResult(list(zip(text_idx.tolist(), time_idx.tolist(), strict=True)), token_probs))
        return results


class _Greedy:
    """One batched greedy decode with Whisper's logit rules (suppression, timestamp pairing, initial timestamp)."""

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

    def _rules(self, logits: torch.Tensor, generated: list[list[int]]) -> torch.Tensor:
        v, tb = self.v, self.v.no_timestamps + 1
        if self.suppress.numel():
            logits[:, self.suppress] = _NEG_INF
        step = len(generated[0])
        if step == 0 and self.suppress_blank:
            logits[:, list(v.suppress_begin)] = _NEG_INF
        logits[:, v.no_timestamps] = _NEG_INF
        if not self.timestamps:
            logits[:, tb:] = _NEG_INF
            return logits
        for k, seq in enumerate(generated):
            last = len(seq) >= 1 and seq[-1] >= tb
            penultimate = len(seq) < 2 or seq[-2] >= tb
            if last:
                if penultimate:
                    logits[k, tb:] = _NEG_INF
                else:
                    logits[k, : v.eot] = _NEG_INF
            stamps = [t for t in seq if t >= tb]
            if stamps:
                # Timestamps never go back; after a closing one the next segment may start at the same time.
                floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
                logits[k, tb:floor] = _NEG_INF
        if step == 0:
            logits[:, :tb] = _NEG_INF
            if self.max_initial is not None:
                logits[:, tb + self.max_initial + 1 :] = _NEG_INF
        logprobs = logits.float().log_softmax(-1)
        stamp_lp = logprobs[:, tb:].logsumexp(-1)
        text_lp = logprobs[:, :tb].max(-1).values
        logits[stamp_lp > text_lp, :tb] = _NEG_INF  # a likely timestamp wins over any single text token
        return logits

    def run(self) -> list[GenerationResult]:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        dec, v = self.m.hf.model.decoder, self.v
        batch = len(self.prompts)
        ids = torch.tensor(self.prompts, device=self.m.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        generated: list[list[int]] = [[] for _ in range(batch)]
        scores = [0.0] * batch
        done = [False] * batch
        no_speech = [0.0] * batch
        for step in range(max(self.max_new, 0)):
            h = dec(input_ids=ids, encoder_hidden_states=self.enc, cache=cache, use_cache=True)
            if step == 0:
                sot_at = self.prompts[0].index(v.sot)
                first = self.m.hf.proj_out(h.last_hidden_state[:, sot_at]).float().softmax(-1)
                no_speech = first[:, v.no_speech].tolist()
            logits = self._rules(self.m.hf.proj_out(h.last_hidden_state[:, -1]).float(), generated)
            logprobs = logits.log_softmax(-1)
            nxt = logits.argmax(-1)
            lp = logprobs.gather(1, nxt[:, None])[:, 0].tolist()
            for k, tok in enumerate(nxt.tolist()):
                if done[k]:
                    continue
                scores[k] += lp[k]
                if tok == v.eot:
                    done[k] = True
                else:
                    generated[k].append(tok)
            if all(done):
                break
            nxt = torch.where(torch.tensor(done, device=nxt.device), torch.full_like(nxt, v.eot), nxt)
            ids = nxt[:, None]
        return [
            GenerationResult([g], [s / max(len(g), 1)], p) for g, s, p in zip(generated, scores, no_speech, strict=True)
        ]


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

        def encode(self, features: np.ndarray) -> torch.Tensor:
            return self.model.encode(features)

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
