"""Models and what they do on images: list, card, image analysis, test samples, dataset view."""
from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import AsyncIterator
from typing import Annotated, Literal, Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from ponderscope import figures
from ponderscope.core.answers import DatasetStatus, ImageAnalysis, analyze_image, input_json
from ponderscope.core.imaging import PIXEL_WORK, decode, encode_png, png_data_url, prepare
from ponderscope.core.loaded import LoadedModel, ModelStore

from ..deps import AnswerRoute, for_kinds, get_model, get_store, require_kind
from ..references import share_arrays
from ..schemas import HASH_PATTERN, ImageRequest, ModelSummary, Sample, errors
from .images import read_upload, store_upload

router = APIRouter(prefix="/api/models", tags=["models"], route_class=AnswerRoute)


@router.get("", summary="All loaded models with their cards", response_model=list[ModelSummary])
def list_models(store: ModelStore = Depends(get_store)) -> list[dict]:
    return [entry.summary() for entry in store.models.values()]


@router.get("/{model_id}", summary="One model with its card", response_model=ModelSummary, responses=errors(404))
def model_detail(entry: LoadedModel = Depends(get_model)) -> dict:
    return entry.summary()


def _test_example(entry: LoadedModel, index: int):
    """-> (Pillow image, label, box or None); a 404 when `index` is past the test set."""
    try:
        return entry.test_set().test_example(index)
    except IndexError as error:
        raise HTTPException(404, str(error)) from None


FORM_FIELDS = ("file", "resolution", "invert")
MAX_JSON_BYTES = 64 * 1024


@dataclass
class ImageInput:
    options: ImageRequest
    upload: Optional[UploadFile] = None  # the file of a multipart request, spooled, not yet read


async def image_input(request: Request) -> AsyncIterator[ImageInput]:
    """The body of POST /{model_id}/image: JSON (`ImageRequest`), or a multipart form with the
    image itself in `file` and the same options as form fields (`curl -F file=@cat.jpg`). The
    file stays in the form's spool (on disk past 1 MB) until the route reads it in its turn at
    PIXEL_WORK, so waiting requests do not hold their uploads in memory."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=len(FORM_FIELDS))
        except (MultiPartException, StarletteHTTPException) as error:  # Starlette reports a malformed form as a 400
            if getattr(error, "status_code", None) == 413:  # limits.BodyLimit: past the limit
                raise
            detail = getattr(error, "detail", None) or getattr(error, "message", str(error))
            raise HTTPException(400, f"the multipart form could not be read ({detail}); send the image as the field 'file'") from None
        try:
            unknown = sorted(set(form) - set(FORM_FIELDS))
            if unknown:
                raise HTTPException(422, f"unknown form field(s) {', '.join(unknown)}; a form takes {', '.join(FORM_FIELDS)}")
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "the form needs the image as a file field 'file' (curl -F file=@image.jpg)")
            options = {k: form[k] for k in ("resolution", "invert") if k in form}
            yield ImageInput(_validated(options), file)
        finally:
            await form.close()
        return
    body = bytearray()
    async for chunk in request.stream():  # bounded, also without a Content-Length
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise HTTPException(413, f"the JSON body is over {MAX_JSON_BYTES // 1024} KB; it only names an image or a sample")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, an absurd number
        raise HTTPException(
            422,
            "the body must be JSON ({\"image\": hash} or {\"sample\": index}) or a multipart form with the image in 'file'",
        ) from None
    yield ImageInput(_validated(payload))


def _validated(payload) -> ImageRequest:
    try:
        return ImageRequest.model_validate(payload)
    except ValidationError as error:  # reported like FastAPI's own body validation
        raise RequestValidationError(error.errors()) from None


_IMAGE_FORM = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the image (any format Pillow reads); stored like POST /api/images"},
        **{k: v for k, v in ImageRequest.model_json_schema()["properties"].items() if k in ("resolution", "invert")},
    },
    "required": ["file"],
    "additionalProperties": False,
}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ImageRequest.model_json_schema()},
            "multipart/form-data": {"schema": _IMAGE_FORM},
        },
    }
}


@router.post("/{model_id}/image", summary="Run an image model on an uploaded image or a test sample", openapi_extra={**_IMAGE_BODY, **for_kinds("image")},
             response_model=ImageAnalysis, responses=errors(400, 404, 413, 422, 503))
def image_analysis(request: Request, payload: ImageInput = Depends(image_input), entry: LoadedModel = Depends(get_model)) -> ImageAnalysis:
    """Returns the top-5 prediction, FLOPs executed vs dense, the request's time, and for models
    that decide per position (Trace.blocks) the ponder maps (`ponder.total` at input resolution,
    `ponder.blocks[i]` per block, in ponder cost N+R; `units_total` / `units` in units executed
    N), for gated models (Trace.gates) the gates, for models with exits (Trace.exit_confidence)
    each exit's confidence, the exit taken and the threshold. A model that takes one input size
    only runs a "native" request at its training size (`input.resolution_note` says so). A trace
    that breaks the Trace contract is a 422 naming the field (docs/own-models.md).

    The body is JSON, `{"image": hash}` (from POST /api/images) or `{"sample": index}`, or a
    multipart form with the image in `file` (one request: `curl -F file=@cat.jpg URL`); the
    upload is stored, and `input.hash` names it for later requests."""
    require_kind(entry, "image")
    body, label, box = payload.options, None, None
    if payload.upload is None and (body.image is None) == (body.sample is None):
        raise HTTPException(422, "give exactly one of 'image' (a hash from POST /api/images) or 'sample' (a test-set index)")
    if body.sample is not None and payload.upload is None:
        sample_image, label, box = _test_example(entry, body.sample)
    with PIXEL_WORK:  # the full-size image lives only in here; the model then reads x
        if payload.upload is not None:
            body.image, image = store_upload(request.app.state.images, read_upload(payload.upload))  # as POST /api/images does
        elif body.image is not None:
            data = request.app.state.images.get(body.image)
            if data is None:
                raise HTTPException(404, f"no stored image with hash {body.image!r}; upload it again with POST /api/images")
            image = decode(data)
        else:
            image = sample_image
        original_size = image.size
        resolution, resolution_note = entry.resolution(body.resolution)  # a model of one input size: its training size
        x, shown = prepare(image, entry.card.preprocess, resolution, body.invert)
        del image
    whatif = None
    if body.whatif is not None:
        from ponderscope.models.whatif import WhatIf, WhatIfError, check

        whatif = WhatIf(**{**body.whatif.model_dump(), "lesion": tuple(body.whatif.lesion)})
        try:
            check(entry.module, whatif)
        except WhatIfError as error:
            raise HTTPException(400, f"model {entry.id!r}: {error}") from None
    url = input_url(entry, body.image, body.sample, resolution, body.invert)
    answer = analyze_image(entry, x, input_json(entry, shown, original_size, resolution, body.image, body.sample, label, box, url, resolution_note),
                           whatif, body.maps)
    return answer_with(answer, "image", body.include)


def answer_with(answer, kind: str, include: list[str]):
    """The answer with what the request asked for: its numbers, its figures, or both (the figures'
    arrays that are the numbers' then as references: no array twice)."""
    if "figures" in include:
        figures.attach(kind, answer)
        if "numbers" in include:
            answer.figures = share_arrays(answer.figures, answer)
    if "numbers" not in include:
        answer.ponder = None  # the maps are in the figures
    return answer


def input_url(entry: LoadedModel, image: Optional[str], sample: Optional[int], resolution: str, invert: bool) -> str:
    """Where the page gets the image as the model saw it: once per image, cacheable."""
    source = image if image is not None else f"sample-{sample}"
    return f"/api/models/{quote(entry.id, safe='')}/input/{source}.png?" + urlencode({"resolution": resolution, "invert": str(invert).lower()})


INPUT_SOURCE = r"^([0-9a-f]{64}|sample-[0-9]{1,9})$"


@router.get("/{model_id}/input/{source}.png", summary="An image as the model sees it (resized, cropped, inverted as the card and request say)",
            response_class=Response, openapi_extra=for_kinds("image"),
            responses={200: {"content": {"image/png": {}}, "description": "the image"}, **errors(400, 404, 422, 503)})
def input_png(request: Request, source: Annotated[str, Path(pattern=INPUT_SOURCE, description="a stored image's hash, or sample-INDEX: a test-set image")],
              entry: LoadedModel = Depends(get_model), resolution: Literal["train", "native"] = "train", invert: bool = False) -> Response:
    """The `input.image` of an image answer: the PNG its maps lie on (`input.width` x `input.height` pixels)."""
    require_kind(entry, "image")
    image = _test_example(entry, int(source[len("sample-"):]))[0] if source.startswith("sample-") else None
    with PIXEL_WORK:
        if image is None:
            data = request.app.state.images.get(source)
            if data is None:
                raise HTTPException(404, f"no stored image with hash {source!r}; upload it again with POST /api/images")
            image = decode(data)
        _, shown = prepare(image, entry.card.preprocess, entry.resolution(resolution)[0], invert)
        png = encode_png(shown)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/{model_id}/samples", summary="Test-set images to pick from", response_model=list[Sample], openapi_extra=for_kinds("image", test_set=True), responses=errors(400, 404, 422, 503))
def samples(count: Annotated[int, Query(ge=1, le=200)] = 24, offset: Annotated[int, Query(ge=0)] = 0, entry: LoadedModel = Depends(get_model)) -> list[dict]:
    require_kind(entry, "image")
    workload = entry.test_set()
    classes = entry.card.classes or workload.classes
    end = min(workload.n_test, offset + count)
    with PIXEL_WORK:  # an image folder's samples are decoded from their files
        return [{"index": i, "label": workload.test_label(i), "class": classes[workload.test_label(i)], "image": png_data_url(workload.thumbnail(i))}
                for i in range(offset, end)]


@router.get("/{model_id}/samples/{index}.png", summary="One test-set image as PNG", response_class=Response, openapi_extra=for_kinds("image", test_set=True),
            responses={200: {"content": {"image/png": {}}, "description": "the image"}, **errors(400, 404, 422, 503)})
def sample_png(index: Annotated[int, Path(ge=0)], entry: LoadedModel = Depends(get_model)) -> Response:
    require_kind(entry, "image")
    image, _, _ = _test_example(entry, index)
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@router.get("/{model_id}/dataset", summary="Statistics over the model's test set or held-out text (computed once, cached)",
            response_model=DatasetStatus, responses=errors(400, 404, 503), openapi_extra=for_kinds("image", "text", test_set=True))
def dataset(request: Request, entry: LoadedModel = Depends(get_model),
            source: Annotated[Optional[str], Query(max_length=200, description="an analysis's name (the model's `analyses`); default: the test set")] = None) -> dict:
    """`status` is "running" (poll again; `progress` 0..1), "done" (with `result`) or "error".
    Image models: accuracy, FLOPs and ponder per class, gate rates. Byte LMs (the Text view's corpus
    panel): mean and spread of N and N + R per character class, ponder vs surprisal."""
    if entry.kind not in ("image", "text"):
        raise HTTPException(400, f"model {entry.id!r} is a {entry.kind} model; the dataset statistics are for image and text models")
    jobs = request.app.state.dataset_jobs
    status = jobs.analysis(entry, source) if source is not None else jobs.status(entry)
    result = status.get("result")
    if result is not None and result.figures is None:  # drawn once per finished job, kept with its result
        figures.attach("dataset", result)
    return status
