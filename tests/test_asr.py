"""ASR with the bundled Whisper tiny.en: key words from committed speech; silence gives an empty transcript."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.decode import decode_file


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def test_speech_wav_transcribes_key_words(item_embedder: Any, fixtures_dir: Path) -> None:
    t = item_embedder.asr.transcribe(_read_wav(fixtures_dir / "speech.wav"))
    words = t.text.lower()
    assert sum(w in words for w in ("quick", "brown", "fox", "lazy", "dog", "river")) >= 4, t.text
    assert t.language == "en" and t.segments and t.segments[0].start_s >= 0
    assert all(s.end_s >= s.start_s for s in t.segments)


@pytest.mark.parametrize("index", [0, 5, 10])
def test_sample_clip_speech(item_embedder: Any, clips: list[dict[str, Any]], session_cfg: Any, index: int) -> None:
    row = clips[index]
    media = decode_file(row["path"], session_cfg.decode, session_cfg.limits)
    t = item_embedder.asr.transcribe(media.audio)
    spoken = {w.strip(".,!?").lower() for w in row["speech"].split() if len(w) > 4}
    heard = {w.strip(".,!?").lower() for w in t.text.split()}
    assert len(spoken & heard) >= max(2, len(spoken) // 3), (row["speech"], t.text)


def test_quiet_audio_gives_empty_transcript(item_embedder: Any, fixtures_dir: Path, session_cfg: Any) -> None:
    media = decode_file(str(fixtures_dir / "quiet_audio.mp4"), session_cfg.decode, session_cfg.limits)
    assert media.audio is not None
    t = item_embedder.asr.transcribe(media.audio)
    assert t.text == "" and t.segments == ()


def test_no_audio_gives_empty_transcript(item_embedder: Any) -> None:
    assert item_embedder.asr.transcribe(None).text == ""
    assert item_embedder.asr.transcribe(np.zeros(16000, dtype=np.float32)).text == ""
