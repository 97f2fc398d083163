"""Models and what they do on images: list, card, image analysis, test samples, dataset view."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from ..analysis import analyze_image
from ..deps import get_model, get_store, require_kind
from ..imaging import ImageError, decode, png_data_url, prepare, tensor_to_image
from ..schemas import ImageRequest
from ..store import LoadedModel, ModelStore

router = APIRouter(prefix="/api/models", tags=["models"])


@router.get("", summary="All loaded models with their cards")
def list_models(store: ModelStore = Depends(get_store)) -> list[dict]:
    return [entry.summary(store.device) for entry in store.models.values()]


@router.get("/{model_id}", summary="One model with its card")
def model_detail(entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> dict:
    return entry.summary(store.device)


def _test_example(store: ModelStore, entry: LoadedModel, index: int):
    workload = store.workload(entry)
    if index >= len(workload.test_y):
        raise HTTPException(404, f"sample {index} is out of range: the test set has {len(workload.test_y)} images (0..{len(workload.test_y) - 1})")
    box = None
    if workload.test_boxes is not None:
        box = [int(v) for v in workload.test_boxes[index]]
    return workload.test_x[index], int(workload.test_y[index]), box


@router.post("/{model_id}/image", summary="Run an image model on an uploaded image or a test sample")
def image_analysis(body: ImageRequest, request: Request, entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> dict:
    """Returns the top-5 prediction, FLOPs executed vs dense, the request's time, and for
    ACT/SACT the ponder maps (`ponder.total` at input resolution, `ponder.blocks[i]` per block,
    in ponder cost N+R; `units_total` / `units` in units executed N), for AIG the gates."""
    require_kind(entry, "image")
    if (body.image is None) == (body.sample is None):
        raise HTTPException(422, "give exactly one of 'image' (a hash from POST /api/images) or 'sample' (a test-set index)")
    label, box = None, None
    if body.image is not None:
        data = request.app.state.images.get(body.image)
        if data is None:
            raise HTTPException(404, f"no stored image with hash {body.image!r}; upload it again with POST /api/images")
        image = decode(data)
    else:
        pixels, label, box = _test_example(store, entry, body.sample)
        image = tensor_to_image(pixels)
    original_size = image.size
    x, shown = prepare(image, entry.card["preprocess"], body.resolution, body.invert)
    if box is not None and shown.size != original_size:  # boxes are in test-image pixels
        sy, sx = shown.size[1] / original_size[1], shown.size[0] / original_size[0]
        box = [round(box[0] * sy), round(box[1] * sx), round(box[2] * sy), round(box[3] * sx)]
    result = analyze_image(entry, store, x)
    classes = entry.card.get("classes") or []
    result["input"] = {
        "image": png_data_url(shown),
        "width": shown.width,
        "height": shown.height,
        "hash": body.image,
        "sample": body.sample,
        "label": label,
        "label_class": classes[label] if label is not None and label < len(classes) else None,
        "box": box,
        "resolution": body.resolution,
    }
    return result


@router.get("/{model_id}/samples", summary="Test-set images to pick from")
def samples(count: int = 24, offset: int = 0, entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> list[dict]:
    require_kind(entry, "image")
    if not 1 <= count <= 200 or offset < 0:
        raise HTTPException(422, "count must be 1..200 and offset >= 0")
    workload = store.workload(entry)
    classes = entry.card.get("classes") or workload.classes
    end = min(len(workload.test_y), offset + count)
    return [
        {"index": i, "label": int(workload.test_y[i]), "class": classes[int(workload.test_y[i])], "image": png_data_url(tensor_to_image(workload.test_x[i]))}
        for i in range(offset, end)
    ]


@router.get("/{model_id}/samples/{index}.png", summary="One test-set image as PNG")
def sample_png(index: int, entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> Response:
    require_kind(entry, "image")
    if index < 0:
        raise HTTPException(422, "index must be >= 0")
    pixels, _, _ = _test_example(store, entry, index)
    import io

    buffer = io.BytesIO()
    tensor_to_image(pixels).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@router.get("/{model_id}/dataset", summary="Statistics over the model's test set (computed once, cached)")
def dataset(request: Request, entry: LoadedModel = Depends(get_model)) -> dict:
    """`status` is "running" (poll again; `progress` 0..1), "done" (with `result`) or "error"."""
    require_kind(entry, "image")
    return request.app.state.dataset_jobs.status(entry)
