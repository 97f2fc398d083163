"""Decoding uploads with Pillow and preparing them as the model's card says.

Any format Pillow reads; the first frame of animations; EXIF orientation applied; 16-bit,
palette, CMYK and alpha images converted. What an image may cost is decided from its header,
before its pixels are decoded: uploads over 20 MB are refused, JPEGs are decoded at a reduced
scale (1/2, 1/4 or 1/8, by the DCT) down to MAX_DECODED_PIXELS, and any other image over that
is refused with a 413. Work on full-size pixels (decode, store, prepare) runs inside
PIXEL_WORK, at most two requests at once, in worker threads, never on the event loop: one
upload costs at most a few times MAX_DECODED_PIXELS x 4 bytes (Pillow keeps RGB in 4 bytes a
pixel), whatever the number of clients; bench/memory.py measures the peak (< 300 MB).
"""
from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000  # in the header, for any format (beyond it, not even a JPEG is reduced)
MAX_DECODED_PIXELS = 16_000_000  # 4928 x 3264, a 16 MP camera; far more than a model reads
MAX_NATIVE_SIDE = 512  # "native" resolution runs at the upload's size, capped on the long side
PNG_STRIP_BYTES = 1 << 20  # encode_png filters and compresses about this many pixel bytes at a time
PIXEL_WORK = threading.BoundedSemaphore(2)  # requests decoding / preparing full-size images at once, server-wide

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageError(ValueError):
    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode(data: bytes) -> Image.Image:
    """Bytes -> a loaded, upright Pillow image in mode L or RGB, of at most MAX_DECODED_PIXELS."""
    if not data:
        raise ImageError("the upload is empty: choose an image file (PNG, JPEG, GIF, WebP, BMP or TIFF)", 400)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the upload is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _reduce_while_decoding(image)
            image.seek(0)  # first frame of a GIF / WebP animation / multi-page TIFF
            orientation = image.getexif().get(0x0112)
            image.load()
            image = _to_l_or_rgb(image)  # before turning it upright: the copy is then of 1 or 3 channels
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"not an image Pillow can read ({type(error).__name__}); upload a PNG, JPEG, GIF, WebP, BMP or TIFF file") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageError(f"the image file is corrupt or truncated ({error})") from None
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    return image


def _reduce_while_decoding(image: Image.Image) -> None:
    """Refuse, or (JPEG) reduce, an image from its header, before any pixel is decoded."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}", 413)
    if width * height <= MAX_DECODED_PIXELS:
        return
    if image.format == "JPEG":
        # The DCT decodes at 1/k of the size for k in 1, 2, 4, 8: the smallest k that fits.
        k = next(k for k in (2, 4, 8) if -(-width // k) * -(-height // k) <= MAX_DECODED_PIXELS)
        image.draft(image.mode if image.mode in ("L", "RGB") else None, (width // k, height // k))
        return
    raise ImageError(
        f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; images other than JPEG may have at most "
        f"{MAX_DECODED_PIXELS / 1e6:.0f} megapixels (the models read far fewer): resize it before uploading", 413)


def encode_png(image: Image.Image) -> bytes:
    """What the image store keeps: the decoded pixels, losslessly, without anything the upload
    carried besides them (trailing bytes, metadata, other frames).

    L and RGB (what `decode` gives) are written here rather than by Pillow: every row with PNG's
    "Up" filter (the difference from the row above) and zlib at level 1, a strip of rows at a
    time (no full-size copy of the pixels is made). Pillow tries all five filters on every row,
    which for a 12-megapixel photo took 210 ms of the upload's 240; this takes ~110 ms and
    compresses about as well on photos (bench/load.py's 12 MP JPEG: 1.19 MB against Pillow's
    1.13). Other modes go to Pillow."""
    if image.mode not in ("L", "RGB"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    width, height = image.size
    channels = 1 if image.mode == "L" else 3
    row_bytes = width * channels
    strip = max(1, PNG_STRIP_BYTES // max(1, row_bytes))  # rows per strip
    compressor, parts, above = zlib.compressobj(1), [], None
    for top in range(0, height, strip):
        rows = np.asarray(image.crop((0, top, width, min(height, top + strip))), dtype=np.uint8).reshape(-1, row_bytes)
        filtered = np.empty((len(rows), row_bytes + 1), dtype=np.uint8)
        filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256); nothing above row 0
        filtered[0, 1:] = rows[0] if above is None else rows[0] - above
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        parts.append(compressor.compress(filtered))
        above = rows[-1].copy()
    parts.append(compressor.flush())
    idat = b"".join(parts)
    del parts
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)  # 8 bits, grey / truecolour
    return b"".join((b"\x89PNG\r\n\x1a\n", *_png_chunk(b"IHDR", header), *_png_chunk(b"IDAT", idat), *_png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> tuple[bytes, ...]:
    """length, type, data, CRC-32 of type and data (PNG section 5.3), as pieces to join once."""
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _to_l_or_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth: scale the full range of the type to 0..255 instead of clipping.
        return Image.fromarray(_scaled_to_uint8(np.asarray(image), image.mode.startswith("I;16")), "L")
    if image.mode == "P" and "transparency" not in image.info:
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "P"):
        # Transparent pixels become black (the bundled datasets draw light objects on black),
        # composited a strip of rows at a time, so no second full-size RGBA copy is made.
        flat = Image.new("L" if image.mode == "LA" else "RGB", image.size, 0)
        for top in range(0, image.height, 256):
            box = (0, top, image.width, min(image.height, top + 256))
            strip = image.crop(box)
            strip = strip.convert("LA" if image.mode == "LA" else "RGBA")
            flat.paste(strip.convert(flat.mode), box, mask=strip.getchannel("A"))
        return flat
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 1-bit


def _scaled_to_uint8(array: np.ndarray, sixteen_bit: bool, rows: int = 256) -> np.ndarray:
    """High-bit-depth pixels -> 0..255: the full range of the type (16 bits for I;16 or where a
    value is over 255, else 8 bits) mapped to 0..255, rounding down; in float32 slices of `rows`
    rows, so no full-size float copy is made."""
    if sixteen_bit:
        return (array // 257).astype(np.uint8)  # floor(v * 255 / 65535), exactly: 65535 = 255 * 257
    top = 65535.0 if float(array.max()) > 255 else 255.0
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], rows):
        part = array[start : start + rows].astype(np.float32) * np.float32(255.0 / top)
        out[start : start + rows] = np.clip(part, 0, 255)
    return out


def prepare(image: Image.Image, preprocess: dict, resolution: str = "train", invert: bool = False) -> tuple[torch.Tensor, Image.Image]:
    """-> (model input [1, C, H, W] prepared as the card's `preprocess` says, the image the model saw).

    preprocess: channels, input_size [H, W]; `resize` (how "train" resolution gets there):
    "stretch" (default: resize to input_size), "center_crop_fraction" (TF inception eval: the
    central `crop_fraction` of each side, then resize), "shorter_then_center_crop" (shorter side
    to `resize_shorter`, then the central input_size); `normalize`: "mean_std" (default, with
    mean and std), "per_image_standardization" (TF's, on 0..255 values), "minus_one_to_one";
    `size_multiple`: "native" sizes are rounded to it (networks that need even maps);
    `native_max_side`: the cap on the long side at "native" resolution (default 512)."""
    channels = int(preprocess["channels"])
    if image.mode != ("L" if channels == 1 else "RGB"):
        image = image.convert("L" if channels == 1 else "RGB")
    if invert:
        image = ImageOps.invert(image)
    array = None  # the pixels in 0..1 when a resize computed them as floats
    if resolution == "train":
        image, array = _resize_for_training(image, preprocess)
    elif resolution == "native":
        width, height = image.size
        scale = min(1.0, int(preprocess.get("native_max_side", MAX_NATIVE_SIDE)) / max(width, height))
        multiple = int(preprocess.get("size_multiple", 1))
        size = [max(8, round(side * scale)) for side in (width, height)]
        size = [max(multiple, int(side / multiple + 0.5) * multiple) for side in size]  # nearest multiple
        if min(width, height) < 8:
            raise ImageError("the image is smaller than 8 pixels on a side; use resolution 'train'")
        if tuple(size) != (width, height):
            image = image.resize(tuple(size), Image.BILINEAR)
    else:
        raise ImageError(f"resolution must be 'train' or 'native', not {resolution!r}")
    if array is None:
        array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)
    return normalize(tensor, preprocess).unsqueeze(0), image


def _resize_for_training(image: Image.Image, preprocess: dict) -> tuple[Image.Image, np.ndarray | None]:
    """-> (the image the model sees, its pixels in 0..1 if computed as floats, else None)."""
    height, width = preprocess["input_size"]
    how = preprocess.get("resize", "stretch")
    if how == "center_crop_fraction":
        # TF-Slim's inception eval: tf.image.central_crop, then TF1's resize_bilinear on floats
        fraction = float(preprocess.get("crop_fraction", 0.875))
        w, h = image.size
        top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
        crop = np.asarray(image.crop((left, top, w - left, h - top)))  # uint8: the resize reads floats of a few rows
        array = tf_resize_bilinear(crop if crop.ndim == 3 else crop[:, :, None], height, width, divide_by=255.0)
        array = array if image.mode != "L" else array[:, :, 0]
        return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8), image.mode), array
    if how == "shorter_then_center_crop":
        # torchvision's Scale(n) / Resize(n) and CenterCrop, with their rounding
        shorter = int(preprocess.get("resize_shorter", max(height, width)))
        w, h = image.size
        if not ((w <= h and w == shorter) or (h <= w and h == shorter)):
            size = (shorter, int(shorter * h / w)) if w < h else (int(shorter * w / h), shorter)
            if size[0] * size[1] > MAX_DECODED_PIXELS:  # a sliver (e.g. 16,000,000 x 1) would grow without bound
                raise ImageError(f"the image is {w}x{h}: with its shorter side resized to {shorter}, as this model's card says, it would be "
                                 f"{size[0]}x{size[1]}; crop it to a less elongated shape", 413)
            image = image.resize(size, Image.BILINEAR)
        w, h = image.size
        left, top = int(round((w - width) / 2.0)), int(round((h - height) / 2.0))
        return image.crop((left, top, left + width, top + height)), None
    if how != "stretch":
        raise ValueError(f"unknown preprocess.resize {how!r}")
    return image.resize((width, height), Image.BILINEAR), None


def tf_resize_bilinear(array: np.ndarray, height: int, width: int, divide_by: float = 1.0) -> np.ndarray:
    """TF1's tf.image.resize_bilinear (align_corners=False, no half-pixel centres) of [H, W, C]
    pixels / divide_by, as float32: output pixel y reads input row y * in/out, interpolated
    between its two neighbours; no antialiasing (Pillow's bilinear filters over the whole
    footprint when shrinking). Only the rows and columns read are converted to floats."""
    in_h, in_w = array.shape[:2]

    def axis(n_out: int, n_in: int):
        where = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
        low = np.floor(where).astype(np.int64)
        return low, np.minimum(low + 1, n_in - 1), (where - low).astype(np.float32)

    y0, y1, dy = axis(height, in_h)
    x0, x1, dx = axis(width, in_w)

    def read(rows, columns):
        return array[rows][:, columns].astype(np.float32) / np.float32(divide_by)

    top = read(y0, x0) + (read(y0, x1) - read(y0, x0)) * dx[None, :, None]
    bottom = read(y1, x0) + (read(y1, x1) - read(y1, x0)) * dx[None, :, None]
    return (top + (bottom - top) * dy[:, None, None]).astype(np.float32)


def normalize(tensor: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """[C, H, W] pixels in 0..1 -> the values the network was trained on."""
    how = preprocess.get("normalize", "mean_std")
    if how == "mean_std":
        mean = torch.tensor(preprocess["mean"], dtype=torch.float32)[:, None, None]
        std = torch.tensor(preprocess["std"], dtype=torch.float32)[:, None, None]
        return (tensor - mean) / std
    if how == "per_image_standardization":  # tf.image.per_image_standardization of 0..255 values
        values = tensor * 255.0
        floor = 1.0 / float(values.numel()) ** 0.5
        return (values - values.mean()) / max(float(values.std(unbiased=False)), floor)
    if how == "minus_one_to_one":
        return (tensor - 0.5) * 2.0
    raise ValueError(f"unknown preprocess.normalize {how!r}")


def png_data_url(image: Image.Image) -> str:
    import base64

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tensor_to_image(uint8: torch.Tensor) -> Image.Image:
    """[C, H, W] or [H, W] uint8 -> Pillow image."""
    array = uint8.cpu().numpy()
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    return Image.fromarray(array)
