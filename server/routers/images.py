"""Uploaded images: POST decodes and stores by content hash, GET returns the stored PNG."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi import Path as FastAPIPath
from fastapi.responses import Response
from PIL import Image

from ..image_store import ImageStore
from ..schemas import HASH_PATTERN, StoredImage, errors
from ponderscope.core.imaging import MAX_UPLOAD_BYTES, PIXEL_WORK, ImageError, decode, encode_png

router = APIRouter(prefix="/api/images", tags=["images"])


def read_upload(file: UploadFile) -> bytes:
    """Read at most the limit + 1 byte, so an oversized upload is refused without being held.
    (The form parser has already spooled the file, to disk beyond 1 MB; this reads it in a
    worker thread, as every route here that touches pixels runs.)"""
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB", 413)
    return data


def store_upload(images: ImageStore, data: bytes) -> tuple[str, Image.Image]:
    """Decode an upload (refusing what is not an image, or would cost too much) and keep its
    pixels as PNG -> (the hash that names it from now on, the decoded image). The caller holds
    PIXEL_WORK while it has the full-size image."""
    image = decode(data)
    return images.put(encode_png(image)), image


@router.post("", summary="Store an uploaded image", response_model=StoredImage, responses=errors(400, 413, 422))
def upload_image(request: Request, file: UploadFile = File(..., description="any image Pillow reads")) -> dict:
    """Returns `{hash, width, height, mode, filename}`; the image is decoded first, so only
    readable images are stored, and what is stored is its pixels as PNG."""
    with PIXEL_WORK:  # the upload is read from its spool only in its turn
        digest, image = store_upload(request.app.state.images, read_upload(file))
    return {"hash": digest, "width": image.width, "height": image.height, "mode": image.mode, "filename": file.filename}


@router.get("/{digest}", summary="An uploaded image by its sha256", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the stored PNG"}, **errors(404, 422)})
def get_image(digest: Annotated[str, FastAPIPath(pattern=HASH_PATTERN)], request: Request) -> Response:
    data = request.app.state.images.get(digest)
    if data is None:
        raise HTTPException(404, f"no stored image with hash {digest!r}; upload it again")
    return Response(content=data, media_type="image/png")
