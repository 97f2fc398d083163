"""Uploaded images: POST stores by content hash, GET returns the stored bytes."""
from __future__ import annotations

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.responses import Response

from ..imaging import MAX_UPLOAD_BYTES, ImageError, decode

router = APIRouter(prefix="/api/images", tags=["images"])


async def read_upload(file: UploadFile) -> bytes:
    """Read at most the limit + 1 byte, so an oversized upload is refused without being held."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB", 413)
    return data


@router.post("", summary="Store an uploaded image")
async def upload_image(request: Request, file: UploadFile = File(..., description="any image Pillow reads")) -> dict:
    """Returns `{hash, width, height, format, mode}`; the image is checked (decoded) first, so
    only readable images are stored."""
    data = await read_upload(file)
    image = decode(data)
    digest = request.app.state.images.put(data)
    return {"hash": digest, "width": image.width, "height": image.height, "mode": image.mode, "filename": file.filename}


@router.get("/{digest}", summary="An uploaded image by its sha256")
def get_image(digest: str, request: Request) -> Response:
    data = request.app.state.images.get(digest)
    if data is None:
        raise HTTPException(404, f"no stored image with hash {digest!r}; upload it again")
    return Response(content=data, media_type="application/octet-stream")
