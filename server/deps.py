"""Shared state for the routers, as FastAPI dependencies."""
from __future__ import annotations

from fastapi import Depends, HTTPException, Request

from ponderscope.core.loaded import LoadedModel, ModelStore


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_model(model_id: str, store: ModelStore = Depends(get_store)) -> LoadedModel:
    entry = store.get(model_id)
    if entry is None:
        known = ", ".join(sorted(store.models)) or "none loaded"
        raise HTTPException(404, f"unknown model id {model_id!r}; known: {known} (GET /api/models lists them)")
    return entry


def for_kinds(*kinds: str, test_set: bool = False) -> dict:
    """`openapi_extra` of a route taking a model_id: which loaded models it serves, so the OpenAPI
    document lists exactly those ids (ponderscope.server.app.document_loaded_models)."""
    return {"x-model-kinds": list(kinds), "x-needs-test-set": test_set}


def require_kind(entry: LoadedModel, kind: str) -> None:
    if entry.kind != kind:
        raise HTTPException(400, f"model {entry.id!r} is a {entry.kind} model ({entry.card.task.name}); this endpoint needs a {kind} model")
