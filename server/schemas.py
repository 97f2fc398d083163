"""Request bodies (pydantic). Responses are documented in each route's docstring."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

MAX_TEXT_BYTES = 10_000  # the model reads UTF-8 bytes: the cost is in bytes, not characters


class ImageRequest(BaseModel):
    image: Optional[str] = Field(None, description="sha256 of an image stored with POST /api/images")
    sample: Optional[int] = Field(None, ge=0, description="index into the model's test set")
    resolution: Literal["train", "native"] = Field("train", description="resize to the training size, or run at the image's own size (long side capped at 512, or at the card's preprocess.native_max_side)")
    invert: bool = Field(False, description="invert grey levels (dark-on-light photos for light-on-dark datasets)")


class TextRequest(BaseModel):
    text: str = Field(..., description=f"any Unicode text, 1..{MAX_TEXT_BYTES} UTF-8 bytes")


class ParityRequest(BaseModel):
    vector: list[float] = Field(..., description="entries in {-1, 0, 1}; length = the model's task.bits")
