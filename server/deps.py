"""Shared state for the routers, as FastAPI dependencies."""
from __future__ import annotations

import difflib
from contextlib import nullcontext

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ponderscope.core.loaded import BrokenTrace, LoadedModel, ModelStore

BROKEN_TRACE_STATUS = 422  # the request cannot be answered by this model: its Trace broke the contract (not a server fault)


class AnswerRoute(APIRoute):
    """A route that runs a model. At most `app.state.model_work` of them are worked on at once (the
    server's request_threads; the others wait on the event loop, holding no worker thread: a
    limiter the app's lifespan makes; an app run without its lifespan has none and waits for
    nothing). A trace that breaks the Trace contract (BrokenTrace, models/contract.py) is answered
    as one JSON error, {"detail": "model ... broke the Trace contract ...: Trace.<field>: expected
    ..., got ..."} with status 422, for that request alone."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer(request: Request):
            try:
                async with getattr(request.app.state, "model_work", None) or nullcontext():
                    return await handler(request)
            except BrokenTrace as error:
                return JSONResponse({"detail": str(error)}, status_code=BROKEN_TRACE_STATUS)

        return answer


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_model(model_id: str, store: ModelStore = Depends(get_store)) -> LoadedModel:
    entry = store.get(model_id)
    if entry is None:
        raise HTTPException(404, unknown_id(model_id, store))
    return entry


def unknown_id(model_id: str, store: ModelStore) -> str:
    """What a request naming no loaded model is told: the closest loaded ids (not all of them)."""
    if not store.models:
        return f"unknown model id {model_id!r}: no model is loaded here (GET /api/health lists the load errors)"
    close = difflib.get_close_matches(model_id, sorted(store.models), n=5, cutoff=0.6)
    hint = f"the closest loaded: {', '.join(close)}" if close else "no loaded id is close"
    return f"unknown model id {model_id!r}; {hint} (GET /api/models lists all {len(store.models)})"


def for_kinds(*kinds: str, test_set: bool = False) -> dict:
    """`openapi_extra` of a route taking a model_id: which loaded models it serves, so the OpenAPI
    document lists exactly those ids (ponderscope.server.app.document_loaded_models)."""
    return {"x-model-kinds": list(kinds), "x-needs-test-set": test_set}


def require_kind(entry: LoadedModel, kind: str) -> None:
    if entry.kind != kind:
        raise HTTPException(400, f"model {entry.id!r} is a {entry.kind} model ({entry.card.task.name}); this endpoint needs a {kind} model")
