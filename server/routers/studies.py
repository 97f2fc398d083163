"""What-if studies over the test set, several models on one figure: threshold / cap / gate-bias
sweeps (accuracy against FLOPs) and lesion studies (ponderscope.studies, run as cached background
jobs like the dataset view, ponderscope/core/jobs.py)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from ponderscope import figures, studies
from ponderscope.core.answers import Reference, StudyStatus
from ponderscope.core.loaded import ModelStore
from ponderscope.models.whatif import knobs

from ..deps import AnswerRoute, get_store, unknown_id
from ..schemas import errors

router = APIRouter(prefix="/api/studies", tags=["studies"], route_class=AnswerRoute)
MAX_MODELS = 6
DEFAULT_LIMIT = 1000
LIMITS = (100, 500, 1000, 2000, 5000, 10000, 1_000_000)


def reference_twin(store: ModelStore, dataset: Optional[str], exclude: set[str]):
    """A loaded reference model (its family registered with reference=True: it skips nothing) of
    the same data set: the sweep's point at 100% of the FLOPs."""
    for entry in store.models.values():
        if entry.reference and entry.kind == "image" and entry.card.dataset == dataset and entry.has_test_set and entry.id not in exclude:
            return entry
    return None


@router.get("/{kind}", summary="A what-if study of one or more image models over their test sets (a background job; poll until done)",
            response_model=StudyStatus, responses=errors(400, 404, 422, 503))
def study(request: Request, kind: Annotated[Literal["sweep", "lesion"], Path(description="sweep: accuracy vs FLOPs as the halting threshold, "
                                                                               "the cap on units or the gate bias moves; lesion: remove units")],
          models: Annotated[list[str], Query(min_length=1, max_length=MAX_MODELS, description="model ids, side by side")],
          limit: Annotated[int, Query(description="the first LIMIT test images of each model (1000000: all); one of a few sizes, "
                                               "so that the jobs and their caches are bounded", json_schema_extra={"enum": list(LIMITS)})] = DEFAULT_LIMIT,
          store: ModelStore = Depends(get_store)) -> dict:
    """`status` is "running" (poll again; `progress` 0..1, per model in `models`), "done" (with
    `results` by model and `figures`) or "error". A sweep adds a loaded reference model (one whose
    family was registered with reference=True: it skips nothing) of the same data set as
    `reference` (its accuracy at 100% of the FLOPs), unless one is asked for."""
    if limit not in LIMITS:
        raise HTTPException(422, f"limit must be one of {', '.join(map(str, LIMITS))}, not {limit}")
    entries = []
    for model_id in dict.fromkeys(models):
        entry = store.get(model_id)
        if entry is None:
            raise HTTPException(404, unknown_id(model_id, store))
        if entry.kind != "image":
            raise HTTPException(400, f"model {model_id!r} is a {entry.kind} model; the what-if studies are for image classifiers")
        entry.require_test_set()
        can = knobs(entry.module)
        if not can:
            raise HTTPException(400, f"model {model_id!r} ({entry.card.model}) has no threshold, gate or residual units to change")
        if kind == "lesion" and "units" not in can:
            raise HTTPException(400, f"model {model_id!r} ({entry.card.model}) has no removable units: a lesion study removes units "
                                     f"(it has {', '.join(k for k in can if k != 'about')} to sweep)")
        entries.append(entry)
    jobs = request.app.state.dataset_jobs
    reference = None
    if kind == "sweep":
        references = [e for e in entries if e.reference]
        twin = references[0] if references else reference_twin(store, entries[0].card.dataset, {e.id for e in entries})
        entries = [e for e in entries if not e.reference] or entries
        reference = twin if twin not in entries else None
    run = studies.sweep if kind == "sweep" else studies.lesion
    statuses = {e.id: jobs.study(e, kind, limit, run) for e in entries + ([reference] if reference else [])}
    states = {s["status"] for s in statuses.values()}
    overall = "error" if "error" in states else "running" if "running" in states else "done"
    answer = {
        "status": overall,
        "progress": sum(s["progress"] for s in statuses.values()) / len(statuses),
        "message": "; ".join(f"{m}: {s['message']}" for m, s in statuses.items() if s["status"] != "done") or "done",
        "models": {m: {k: s[k] for k in ("status", "progress", "message")} for m, s in statuses.items()},
        "results": None,
        "reference": None,
    }
    if overall != "done":
        return answer
    results = {e.id: statuses[e.id]["result"]["result"] for e in entries}
    answer["results"] = results
    if reference is not None:
        point = statuses[reference.id]["result"]["result"][0]
        answer["reference"] = Reference(label=reference.id, accuracy=point.accuracy, flops_ratio=point.flops_ratio, examples=point.examples)
    return figures.attach(kind, answer)
