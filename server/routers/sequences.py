"""Models that ponder per input step: per-character ponder on text, and the parity task."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from ponderscope import figures
from ponderscope.core.answers import ParityAnalysis, TextAnalysis, analyze_parity, analyze_text, valid_unicode
from ponderscope.core.loaded import LoadedModel

from ..deps import AnswerRoute, for_kinds, get_model, require_kind
from ..schemas import MAX_TEXT_BYTES, ParityRequest, TextRequest, errors

router = APIRouter(prefix="/api/models", tags=["sequences"], route_class=AnswerRoute)


@router.post("/{model_id}/text", summary="Ponder time and surprisal per character", response_model=TextAnalysis, responses=errors(400, 404, 413, 422),
             openapi_extra=for_kinds("text"))
def text_analysis(body: TextRequest, entry: LoadedModel = Depends(get_model)) -> TextAnalysis:
    """Returns `chars`: one entry per Unicode character with `ponder` (N + R), `steps` (N), both
    averaged over the character's UTF-8 bytes, `bits` (its surprisal given the text before it;
    null for the first character) and `class`; `classes`: per class in this text, count and mean
    N and N + R; `measure`: "steps" if N varies over this text, else "ponder". A model whose
    trace says which layers computed each byte (Trace.token_layers) also answers `layer_names` and,
    per character, `layers` (1: the layer computed it, 0: not; the mean over a character's bytes)
    and `layer_weights` (the weight each layer's output got: a halting weight, a router's)."""
    require_kind(entry, "text")
    if not body.text:
        raise HTTPException(422, "the text is empty: type at least one character")
    text, _ = valid_unicode(body.text)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:  # the model reads bytes: 10,000 emoji are 40,000 steps
        raise HTTPException(413, f"the text is {size} UTF-8 bytes ({len(text)} characters); the limit is {MAX_TEXT_BYTES} bytes")
    return figures.attach("text", analyze_text(entry, body.text))


@router.post("/{model_id}/parity", summary="Run a parity model on one input vector", response_model=ParityAnalysis, responses=errors(400, 404, 422),
             openapi_extra=for_kinds("parity"))
def parity(body: ParityRequest, entry: LoadedModel = Depends(get_model)) -> ParityAnalysis:
    require_kind(entry, "parity")
    bits = entry.card.task.bits
    if len(body.vector) != bits:
        raise HTTPException(422, f"the vector has {len(body.vector)} entries; this model takes exactly {bits}")
    return figures.attach("parity", analyze_parity(entry, body.vector))
