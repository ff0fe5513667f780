"""ASR with the bundled Whisper tiny.en: key words from committed speech, the speech gate, batched transcription."""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.asr import wer, words
from embedder.asr import SAMPLE_RATE, Transcriber
from embedder.decode import decode_file
from embedder.factory import load_model
from embedder.types import ConfigError


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def _music(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords with harmonics, a new one every half second, plus a little noise: music-like, no voice."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.5):
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        env = np.exp(-3 * (t - start)) * ((t >= start) & (t < start + 0.5))
        for ratio in (1.0, 1.25, 1.5):
            for h in (1, 2, 3):
                out += env * np.sin(2 * np.pi * root * ratio * h * t) / (h * 3)
    return (0.25 * out + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def asr(session_cfg: Any) -> Transcriber:
    """The bundled Whisper tiny.en through its card, without the rest of the pipeline."""
    model = load_model(session_cfg.models.asr.card, session_cfg)
    assert isinstance(model, Transcriber)
    return model


@pytest.fixture(scope="module")
def clip_audio(clips: list[dict[str, Any]], session_cfg: Any) -> Callable[[str], np.ndarray]:
    """16 kHz audio of a sample clip by item id, decoded once."""
    cache: dict[str, np.ndarray] = {}

    def get(item_id: str) -> np.ndarray:
        if item_id not in cache:
            row = next(r for r in clips if r["item_id"] == item_id)
            audio = decode_file(row["path"], session_cfg.decode, session_cfg.limits).audio
            assert audio is not None
            cache[item_id] = audio
        return cache[item_id]

    return get


@pytest.fixture
def encoder_calls(asr: Transcriber, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Whisper encoder passes (every transcription path runs one per 30-s window)."""
    calls: list[int] = []
    encode = asr.model.encode

    def counting(features: Any) -> Any:
        calls.append(1)
        return encode(features)

    monkeypatch.setattr(asr.model, "encode", counting)
    return calls


def test_speech_wav_transcribes_key_words(asr: Transcriber, fixtures_dir: Path) -> None:
    t = asr.transcribe(_read_wav(fixtures_dir / "speech.wav"))
    words = t.text.lower()
    assert sum(w in words for w in ("quick", "brown", "fox", "lazy", "dog", "river")) >= 4, t.text
    assert t.language == "en" and t.segments and t.segments[0].start_s >= 0
    assert all(s.end_s >= s.start_s for s in t.segments)
    assert t.speech is True


@pytest.mark.parametrize("index", [0, 5, 10])
def test_sample_clip_speech(asr: Transcriber, clips: list[dict[str, Any]], clip_audio: Any, index: int) -> None:
    row = clips[index]
    t = asr.transcribe(clip_audio(row["item_id"]))
    spoken = {w.strip(".,!?").lower() for w in row["speech"].split() if len(w) > 4}
    heard = {w.strip(".,!?").lower() for w in t.text.split()}
    assert len(spoken & heard) >= max(2, len(spoken) // 3), (row["speech"], t.text)


def test_quiet_audio_gives_empty_transcript(asr: Transcriber, fixtures_dir: Path, session_cfg: Any) -> None:
    media = decode_file(str(fixtures_dir / "quiet_audio.mp4"), session_cfg.decode, session_cfg.limits)
    assert media.audio is not None
    t = asr.transcribe(media.audio)
    assert t.text == "" and t.segments == () and t.speech is False


def test_no_audio_gives_empty_transcript(asr: Transcriber) -> None:
    none = asr.transcribe(None)
    assert none.text == "" and none.speech is None
    zeros = asr.transcribe(np.zeros(16000, dtype=np.float32))
    assert zeros.text == "" and zeros.speech is False


def test_gate_skips_whisper_on_silence_and_music(
    asr: Transcriber, encoder_calls: list[int], fixtures_dir: Path
) -> None:
    speech = _read_wav(fixtures_dir / "speech.wav")
    silence = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
    music = _music(4.0)
    assert asr.has_speech(speech) and not asr.has_speech(silence) and not asr.has_speech(music)
    out = asr.transcribe_batch([silence, music], mode="pack")
    assert [t.speech for t in out] == [False, False] and all(t.text == "" for t in out)
    assert encoder_calls == []  # Whisper never ran


def test_min_speech_s_gates_short_speech(asr: Transcriber, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speech = _read_wav(fixtures_dir / "speech.wav")
    assert 1.0 < asr.speech_seconds(speech) < speech.size / SAMPLE_RATE
    monkeypatch.setattr(asr, "cfg", asr.cfg.model_copy(update={"min_speech_s": 30.0}))
    t = asr.transcribe(speech)
    assert t.text == "" and t.speech is False


@pytest.mark.parametrize("mode", ["pack", "generate"])
def test_batched_matches_one_by_one(asr: Transcriber, clip_audio: Any, mode: str) -> None:
    audios = [clip_audio("cooking_01"), clip_audio("cooking_03")]
    one = [asr.transcribe(a) for a in audios]
    batched = asr.transcribe_batch(audios, mode=mode)
    assert [words(t.text) for t in batched] == [words(t.text) for t in one]
    assert all(t.speech is True and t.language == "en" for t in batched)


def test_pack_puts_words_back_on_their_clip(asr: Transcriber, clip_audio: Any, encoder_calls: list[int]) -> None:
    # cooking_03 then space_04: the word alignment stretches "stove" onto space_04's start; it must stay put.
    ids = ["cooking_01", "cooking_03", "space_04"]
    audios = [clip_audio(i) for i in ids]
    out = asr.transcribe_batch(audios, mode="pack")
    assert len(encoder_calls) == 1  # three clips, one Whisper window
    own = [{"pasta", "garlic"}, {"soup", "stove"}, {"telescope", "saturn"}]
    for t, audio, mine in zip(out, audios, own, strict=True):
        heard = set(words(t.text))
        assert mine <= heard, t.text
        assert not any(other & heard for other in own if other is not mine), t.text
        duration = audio.size / SAMPLE_RATE
        assert t.segments and all(0 <= s.start_s <= s.end_s <= duration for s in t.segments), (t.segments, duration)


def test_batch_flags_and_order(asr: Transcriber, clip_audio: Any) -> None:
    audios = [clip_audio("soccer_02"), None, _music(3.0, seed=1), clip_audio("ocean_01")]
    out = asr.transcribe_batch(audios, mode="pack")
    assert [t.speech for t in out] == [True, None, False, True]
    assert "soccer" in words(out[0].text) and "waves" in words(out[3].text)
    assert out[1].text == out[2].text == ""


def test_clip_longer_than_a_window_goes_one_by_one(
    asr: Transcriber, clip_audio: Any, encoder_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An 8-s window keeps the test fast: the two-clip item is longer than it, the other two are not.
    monkeypatch.setattr(asr, "window_s", 8.0)
    long = np.concatenate([clip_audio("cooking_01"), clip_audio("soccer_01")])
    audios = [clip_audio("ocean_01"), long, clip_audio("space_01")]
    out = asr.transcribe_batch(audios, mode="pack")
    assert len(encoder_calls) == 2  # the long item alone, the two short ones packed together
    assert out[1].text == asr.transcribe(long).text
    assert {"pasta", "goalkeeper"} <= set(words(out[1].text))
    assert "waves" in words(out[0].text) and "rocket" in words(out[2].text)


def test_unknown_batch_mode_is_a_config_error(asr: Transcriber) -> None:
    with pytest.raises(ConfigError) as e:
        asr.transcribe_batch([None], mode="bogus")
    assert e.value.reason == "invalid_batch_mode"


# -- torch backend (transformers Whisper from the shipped CTranslate2 weights) ------------------------------------


@pytest.fixture(scope="module")
def torch_asr(session_cfg: Any, tmp_path_factory: pytest.TempPathFactory) -> Transcriber:
    """The same card on the torch backend, its converted weights cached in a temp folder."""
    asr_cfg = session_cfg.asr.model_copy(
        update={"backend": "torch", "torch_cache_dir": tmp_path_factory.mktemp("converted")}
    )
    model = load_model(session_cfg.models.asr.card, session_cfg.model_copy(update={"asr": asr_cfg}))
    assert isinstance(model, Transcriber) and model.backend == "torch"
    return model


# Stated bound: the torch backend runs the fp32 weights, faster-whisper the int8-quantized ones, so a word can differ
# ("hardly oil" vs "hardly boil" on cooking_02); on these two clips they must agree within 10 % WER.
TORCH_VS_CT2_MAX_WER = 10.0


def test_torch_backend_same_words_as_faster_whisper(asr: Transcriber, torch_asr: Transcriber, clip_audio: Any) -> None:
    audios = [clip_audio("cooking_01"), clip_audio("soccer_02")]
    ct2 = [asr.transcribe(a).text for a in audios]
    torch_out = [torch_asr.transcribe(a) for a in audios]
    assert all(t.text and t.speech is True and t.language == "en" for t in torch_out)
    assert wer(ct2, [t.text for t in torch_out]) <= TORCH_VS_CT2_MAX_WER, (ct2, [t.text for t in torch_out])


def test_torch_conversion_is_exact_against_ctranslate2_float32(torch_asr: Transcriber, clip_audio: Any) -> None:
    # Same weights, same precision: the converted model must decode the same tokens and word times as CTranslate2.
    from faster_whisper import WhisperModel

    ct2 = WhisperModel(str(torch_asr.model.source), device="cpu", compute_type="float32", cpu_threads=1)
    options = dict(language="en", beam_size=1, temperature=0.0, condition_on_previous_text=False, word_timestamps=True)
    audio = clip_audio("cooking_04")
    ref = list(ct2.transcribe(audio, **options)[0])
    got = list(torch_asr.model.transcribe(audio, **options)[0])
    assert [s.tokens for s in got] == [s.tokens for s in ref]
    ref_words = [(w.word, w.start, w.end) for s in ref for w in s.words or []]
    got_words = [(w.word, w.start, w.end) for s in got for w in s.words or []]
    assert [w for w, _, _ in got_words] == [w for w, _, _ in ref_words] and ref_words
    assert all(abs(a[1] - b[1]) <= 0.02 and abs(a[2] - b[2]) <= 0.02 for a, b in zip(got_words, ref_words, strict=True))


def test_torch_backend_batches_with_the_speech_gate(torch_asr: Transcriber, clip_audio: Any) -> None:
    audios = [clip_audio("cooking_01"), _music(3.0, seed=2), clip_audio("space_04")]
    for mode in ("pack", "generate"):
        out = torch_asr.transcribe_batch(audios, mode=mode)
        assert [t.speech for t in out] == [True, False, True], mode
        assert {"pasta", "garlic"} <= set(words(out[0].text)) and out[1].text == ""
        assert {"telescope", "saturn"} <= set(words(out[2].text)), out[2].text


def test_torch_weights_are_converted_once(torch_asr: Transcriber, monkeypatch: pytest.MonkeyPatch) -> None:
    import embedder.asr_torch as asr_torch

    cached = [p for p in Path(torch_asr.cfg.torch_cache_dir).iterdir() if not p.name.startswith(".")]
    assert [p.name for p in cached] == [f"whisper-tiny-en-{torch_asr.card.files[0].sha256[:12]}"]

    def no_conversion(_path: Path) -> dict[str, np.ndarray]:
        raise AssertionError("model.bin parsed again although the converted weights are cached")

    monkeypatch.setattr(asr_torch, "read_ct2", no_conversion)
    again = Transcriber(torch_asr.card, torch_asr.model.source, torch_asr.cfg, "cpu")
    assert again.backend == "torch"


def test_torch_features_match_faster_whisper(asr: Transcriber, torch_asr: Transcriber, clip_audio: Any) -> None:
    audio = clip_audio("ocean_01")
    ref = asr.model.feature_extractor(audio)
    got = torch_asr.model.feature_extractor(audio)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-3


# -- torch backend, `pack` batched: every window of the batch in one encode + decode + alignment per round --------


@pytest.fixture
def torch_calls(torch_asr: Transcriber, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Windows per batched decode call; faster-whisper's per-window loop must not run at all."""
    calls: dict[str, list[int]] = {"generate": []}
    runtime = torch_asr.model.model
    generate = runtime.generate

    def counting(enc: Any, prompts: list[list[int]], **options: Any) -> list:
        calls["generate"].append(len(prompts))
        return generate(enc, prompts, **options)

    def no_loop(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("faster-whisper's per-window loop ran")

    monkeypatch.setattr(runtime, "generate", counting)
    monkeypatch.setattr(torch_asr.model, "generate_segments", no_loop)
    monkeypatch.setattr(torch_asr, "cfg", torch_asr.cfg.model_copy(update={"torch_batched": True}))
    return calls


def test_torch_batched_pack_same_words_as_faster_whisper(
    asr: Transcriber, torch_asr: Transcriber, clip_audio: Any, torch_calls: dict[str, list[int]]
) -> None:
    audios = [clip_audio("cooking_01"), clip_audio("soccer_02")]
    ct2 = [t.text for t in asr.transcribe_batch(audios, mode="pack")]
    out = torch_asr.transcribe_batch(audios, mode="pack")
    assert torch_calls["generate"] == [1]  # both clips in one packed window, one decode
    assert all(t.text and t.speech is True and t.language == "en" for t in out)
    assert wer(ct2, [t.text for t in out]) <= TORCH_VS_CT2_MAX_WER, (ct2, [t.text for t in out])


def test_torch_batched_pack_equals_the_per_window_loop(
    torch_asr: Transcriber, clip_audio: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same streams (two clips each), same model: the lockstep rounds must reproduce faster-whisper's loop on each.
    audios = [clip_audio(i) for i in ("cooking_03", "space_04", "ocean_02", "soccer_04")]
    cfg = torch_asr.cfg.model_copy(update={"batch_size": 2})
    monkeypatch.setattr(torch_asr, "cfg", cfg.model_copy(update={"torch_batched": True}))
    batched = torch_asr.transcribe_batch(audios, mode="pack")
    monkeypatch.setattr(torch_asr, "cfg", cfg.model_copy(update={"torch_batched": False}))
    loop = torch_asr.transcribe_batch(audios, mode="pack")
    assert [t.text for t in batched] == [t.text for t in loop]
    for a, b in zip(batched, loop, strict=True):
        assert len(a.segments) == len(b.segments)
        assert all(
            abs(x.start_s - y.start_s) <= 0.02 and abs(x.end_s - y.end_s) <= 0.02
            for x, y in zip(a.segments, b.segments, strict=True)
        )


def test_torch_batched_pack_gives_each_clip_its_own_transcript(
    torch_asr: Transcriber, clip_audio: Any, torch_calls: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two clips per stream, and one item longer than a 30-s window: four streams decoded side by side, the long
    # one needing a second round of its own.
    monkeypatch.setattr(torch_asr, "cfg", torch_asr.cfg.model_copy(update={"batch_size": 2}))
    parts = ["cooking_04", "soccer_01", "ocean_03", "space_02", "cooking_02", "soccer_03", "ocean_04", "space_03"]
    long = np.concatenate([clip_audio(p) for p in parts])
    assert long.size / SAMPLE_RATE > 30
    ids = ["cooking_01", None, "soccer_02", "ocean_01", "long", "space_04"]
    audios = [None if i is None else long if i == "long" else clip_audio(i) for i in ids]
    audios[1] = _music(3.0, seed=3)
    out = torch_asr.transcribe_batch(audios, mode="pack")
    assert torch_calls["generate"][0] == 4 and len(torch_calls["generate"]) >= 2, torch_calls
    assert [t.speech for t in out] == [True, False, True, True, True, True] and out[1].text == ""
    own = {0: {"pasta", "garlic"}, 2: {"soccer", "field"}, 3: {"waves", "beach"}, 5: {"telescope", "saturn"}}
    for k, mine in own.items():
        heard = set(words(out[k].text))
        assert len(mine & heard) >= 1, out[k].text
        assert not any(other & heard for j, other in own.items() if j != k), out[k].text
    assert len(words(out[4].text)) >= 50 and not set(words(out[4].text)) & {"pasta", "telescope"}
    for t, audio in zip(out, audios, strict=True):
        duration = audio.size / SAMPLE_RATE
        assert all(0 <= s.start_s <= s.end_s <= duration for s in t.segments), (t.segments, duration)
    assert out[4].segments[-1].start_s > 25  # the long item's last words sit late on its own timeline
