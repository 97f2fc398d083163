"""Recurrent ACT models: per-character ponder on text, and the parity task."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from ..analysis import analyze_parity, analyze_text
from ..deps import for_kinds, get_model, get_store, require_kind
from ..schemas import MAX_TEXT_BYTES, ParityAnalysis, ParityRequest, TextAnalysis, TextRequest, errors
from ..store import LoadedModel, ModelStore

router = APIRouter(prefix="/api/models", tags=["sequences"])


@router.post("/{model_id}/text", summary="Ponder time and surprisal per character", response_model=TextAnalysis, responses=errors(400, 404, 413, 422),
             openapi_extra=for_kinds("text"))
def text_analysis(body: TextRequest, entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> dict:
    """Returns `chars`: one entry per Unicode character with `ponder` (N + R), `steps` (N), both
    averaged over the character's UTF-8 bytes, `bits` (its surprisal given the text before it;
    null for the first character) and `class`; `classes`: per class in this text, count and mean
    N and N + R; `measure`: "steps" if N varies over this text, else "ponder"."""
    require_kind(entry, "text")
    if not body.text:
        raise HTTPException(422, "the text is empty: type at least one character")
    text, replaced = valid_unicode(body.text)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:  # the model reads bytes: 10,000 emoji are 40,000 steps
        raise HTTPException(413, f"the text is {size} UTF-8 bytes ({len(text)} characters); the limit is {MAX_TEXT_BYTES} bytes")
    result = analyze_text(entry, store, text)
    result["replaced_surrogates"] = replaced
    return result


def valid_unicode(text: str) -> tuple[str, int]:
    """JSON can carry lone or reversed surrogates ("\\ud800"), which are no characters and have no
    UTF-8: each becomes U+FFFD, the replacement character -> (the text, how many were replaced)."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed, fixed.count("\ufffd") - text.count("\ufffd")


@router.post("/{model_id}/parity", summary="Run a parity model on one input vector", response_model=ParityAnalysis, responses=errors(400, 404, 422),
             openapi_extra=for_kinds("parity"))
def parity(body: ParityRequest, entry: LoadedModel = Depends(get_model), store: ModelStore = Depends(get_store)) -> dict:
    require_kind(entry, "parity")
    bits = entry.card.task.bits
    if len(body.vector) != bits:
        raise HTTPException(422, f"the vector has {len(body.vector)} entries; this model takes exactly {bits}")
    return analyze_parity(entry, store, body.vector)
