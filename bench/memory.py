"""What one hostile upload costs the server: `.venv/bin/python -m bench.memory`.

Small files that decode to many pixels (a 16-bit PNG, a float TIFF, a WebP, an RGBA PNG, a CMYK
JPEG, a 49-megapixel JPEG, an EXIF-rotated one ...) are made in a scratch folder, then each runs
through what the server does with an upload, in a fresh process: decode (ponderscope.core.imaging.decode),
re-encode for the store (encode_png), and prepare for an ImageNet-style model at "train"
resolution (central crop + TF bilinear resize to 224) and at "native" resolution. Reported per
file: its size, its header's pixels, the answer (200, or the 413 that refuses it) and the peak
RSS above the process's own after imports (VmHWM, Linux), which must stay under 300 MB.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

LIMIT_MB = 300
IMAGENET_PREPROCESS = {"channels": 3, "input_size": [224, 224], "resize": "center_crop_fraction", "crop_fraction": 0.875,
                       "normalize": "minus_one_to_one"}


def _gradient(width: int, height: int, top: int) -> np.ndarray:
    """A smooth [H, W] ramp 0..top with some structure (compresses small, but is no single colour)."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    return ((x * 0.7 + y * 0.3) * top).astype(np.float32)


def make_cases(folder: Path, side: int = 4000, big: int = 7071) -> dict[str, Path]:
    """The files: at `side` (16 MP, just accepted) in the costliest modes, and at `big` (50 MP)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}

    def save(name: str, image: Image.Image, fmt: str, **options) -> None:
        path = folder / name
        image.save(path, format=fmt, **options)
        cases[name] = path

    ramp = _gradient(side, side, 65535)
    save("16bit_4000.png", Image.fromarray(ramp.astype(np.uint16)), "PNG")
    save("float_4000.tif", Image.fromarray(np.floor(ramp / 256) / np.float32(255.0)), "TIFF", compression="tiff_adobe_deflate")
    del ramp
    grey = Image.fromarray(_gradient(side, side, 255).astype(np.uint8))
    rgba = Image.merge("RGBA", (grey, grey.transpose(Image.Transpose.ROTATE_90), grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))
    save("rgba_4000.png", rgba, "PNG", compress_level=1)
    save("rgba_4000.webp", rgba, "WEBP", lossless=True, quality=0)
    save("palette_alpha_4000.png", rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG", compress_level=1, transparency=0)
    save("cmyk_4000.jpg", rgba.convert("RGB").convert("CMYK"), "JPEG", quality=90)
    rotated = rgba.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    save("exif_rotated_4000.jpg", rotated, "JPEG", quality=90, exif=exif.tobytes())
    del rgba, rotated
    big_grey = Image.fromarray(_gradient(big, big, 255).astype(np.uint8))
    save(f"rgb_{big}.jpg", big_grey.convert("RGB"), "JPEG", quality=85)
    save(f"16bit_{big}.png", Image.fromarray(np.asarray(big_grey, dtype=np.uint16) * 257), "PNG")
    save(f"lossless_{big}.webp", big_grey, "WEBP", lossless=True, quality=0)
    return cases


def _measure_one(path: str) -> dict:
    """In this (fresh) process: the peak RSS of handling one upload, over the process's own."""
    import time

    import torch  # noqa: F401  (imported before the baseline, as in the server)

    from ponderscope.core.imaging import ImageError, decode, encode_png, prepare

    def peak_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")

    warm = Image.new("RGB", (64, 64))
    buffer = io.BytesIO()
    warm.save(buffer, "PNG")
    prepare(decode(buffer.getvalue()), IMAGENET_PREPROCESS)  # imports and first-call set-up
    data = Path(path).read_bytes()
    baseline = peak_mb()
    started = time.perf_counter()
    try:
        image = decode(data)
        stored = encode_png(image)
        prepare(image, IMAGENET_PREPROCESS, "train")
        prepare(image, IMAGENET_PREPROCESS, "native")
        status, detail = 200, f"{image.width}x{image.height} {image.mode}, stored {len(stored) / 1e6:.1f} MB"
    except ImageError as error:
        status, detail = error.status, str(error)
    return {"status": status, "detail": detail, "peak_mb": round(peak_mb() - baseline, 1), "seconds": round(time.perf_counter() - started, 2)}


def measure(path: Path) -> dict:
    """Run _measure_one in a fresh interpreter (a peak RSS is only a process's own)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "bench.memory", "--one", str(path)], cwd=root, capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {path.name} failed:\n{out.stderr[-2000:]}")
    with Image.open(path) as image:
        pixels = image.width * image.height
    return {"file": path.name, "bytes": path.stat().st_size, "megapixels": round(pixels / 1e6, 1), **json.loads(out.stdout.splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure_one(args.one)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(path) for path in make_cases(Path(scratch)).values()]
    print(f"| file | bytes | header MP | answer | peak RSS above baseline, MB | seconds | what |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['file']} | {row['bytes']:,} | {row['megapixels']} | {row['status']} | {row['peak_mb']} | {row['seconds']} | {row['detail'][:90]} |")
    worst = max(row["peak_mb"] for row in rows)
    print(f"\nworst peak: {worst} MB (limit {LIMIT_MB} MB): {'met' if worst < LIMIT_MB else 'NOT met'}")
    sys.exit(0 if worst < LIMIT_MB else 1)


if __name__ == "__main__":
    main()
