"""The FastAPI application: `create_app(...)` for tests and embedding, `run(...)` for the CLI.

    checkpoint dirs -> ModelStore (models loaded once) -> routers -> JSON -> static/app.js -> Plotly
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ponderscope import __version__
from ponderscope.paths import CHECKOUT, resource
from ponderscope.core.data import DataSourceMissing

from ponderscope.core.jobs import DatasetJobs
from .image_store import DEFAULT_DISK_BYTES, ImageStore
from ponderscope.core.imaging import ImageError
from .access import OPEN_PATHS, AccessPolicy, AccessToken, RedactTokens, choose_policy, login_links
from .limits import BodyLimit
from .schemas import Health
from .routers import images, models, sequences, studies
from ponderscope.core.loaded import BUNDLED_CHECKPOINTS, ModelStore, NoTestSet, resolve_device

log = logging.getLogger("ponderscope")

# Every response: only the page's own scripts run (no inline script, no eval; the models' JSON is a
# non-executed <script type="application/json">); styles may be inline (Plotly writes its own);
# images may be data: URLs (uploads, ponder-map backgrounds) or blob: (downloads); no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                               "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response (pure ASGI: it leaves the request
    body to the app, so the body limit's 413 is raised, and answered, inside the app)."""

    def __init__(self, app):
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def document_loaded_models(schema: dict, store: ModelStore) -> dict:
    """The OpenAPI document lists, for each route taking a model_id, the ids of the loaded models
    it serves (deps.for_kinds), so that a request valid by the document names a model that is there."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            kinds, needs_test_set = operation.pop("x-model-kinds", None), operation.pop("x-needs-test-set", False)
            for parameter in operation.get("parameters", []):
                if parameter["name"] != "model_id":
                    continue
                ids = sorted(entry.id for entry in store.models.values()
                             if (kinds is None or entry.kind in kinds) and (entry.has_test_set or not needs_test_set))
                parameter["description"] = "a loaded model's id (GET /api/models)" + (f"; here one of a {' or '.join(kinds)} model" if kinds else "")
                if ids:
                    parameter["schema"] = {**parameter["schema"], "enum": ids}
    bits = {entry.card.task.bits for entry in store.models.values() if entry.kind == "parity"}
    if len(bits) == 1:  # every parity model here reads the same length: the document can say it
        vector = schema["components"]["schemas"]["ParityRequest"]["properties"]["vector"]
        vector["minItems"] = vector["maxItems"] = bits.pop()
    return schema


def document_access(schema: dict, access: AccessPolicy | None) -> dict:
    """With a token asked for: the bearer scheme, required by every operation but the open ones,
    each of which may then answer 401 (the page's cookie is the browser's way to the same token)."""
    if access is None or access.token is None:
        return schema
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["token"] = {
        "type": "http", "scheme": "bearer", "description": "the server's access token (printed at start-up; --token; $PONDERSCOPE_TOKEN)"}
    schema["security"] = [{"token": []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            operation.setdefault("responses", {})["401"] = {
                "description": "no access token, or not this server's", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return schema


def deterministic_cuda() -> None:
    """The server's answers on CUDA: the same image gives the same numbers, request after request (a
    copied URL reproduces the screen). Deterministic kernels (sparse execution's row updates would
    otherwise use atomics: answers differed by 3e-8 on an H200), cuBLAS's fixed workspace, fp32 (no
    TF32). Process-wide, so set by the server only, not by a notebook's ps.load."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def plotly_js_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def default_request_threads() -> int:
    """The CPUs this process may use, at least 2: the cores it may run on, and fewer where a cgroup
    quota says so (`docker run --cpus 2` on a larger host)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" (no quota) or "200000 100000" (2 CPUs)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(2, cores)


def create_app(checkpoint_dirs: list[str | Path] | None = None, device: str = "auto", cache_dir: str | Path | None = None,
               data_roots: list[str | Path] | None = None, image_store_bytes: int = DEFAULT_DISK_BYTES,
               analyses: list[str | Path] | None = None, execution: str = "auto", access: AccessPolicy | None = None,
               request_threads: int | None = None) -> FastAPI:
    """analyses: `ponderscope analyze` folders to show in the Dataset view (beside those found in
    the checkpoints' own folders), each with the loaded model whose weights it analysed.
    request_threads: how many requests to the model routes (server/deps.py's AnswerRoute: image,
    text and parity analysis, samples, studies) are worked on at once; the others wait on the
    event loop, holding no thread (default: the CPUs, at least 2). Without it anyio runs up to 40
    sync routes at once, which on two cores fight over the GIL and hold their tensors together
    (bench/load.py: more requests a second with 2 at once than with 40, in about 0.6x the memory).
    Static files, uploads and GET /api/health do not wait for it.
    execution: "auto" (each model's faster path per batch size, timed at start-up and cached in
    the cache folder: ponderscope.core.execution), "sparse" or "masked".
    access: the token every route but GET /api/health asks for (server/access.py); None: none."""
    cache = Path(cache_dir or os.environ.get("PONDERSCOPE_CACHE") or Path(tempfile.gettempdir()) / "ponderscope-cache")
    if resolve_device(device).startswith("cuda"):  # before the first forward pass (the plans time the kernels that will run, and
        deterministic_cuda()                        # cuBLAS reads its workspace setting then)
    store = ModelStore(checkpoint_dirs or [BUNDLED_CHECKPOINTS], device=device, data_roots=data_roots, execution=execution, plan_cache=cache)
    for folder in analyses or []:
        store.add_analysis(folder)

    threads = default_request_threads() if request_threads is None else request_threads
    if threads < 1:
        raise ValueError(f"request_threads must be at least 1, not {threads}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model_work = anyio.CapacityLimiter(threads)  # made on the loop that serves (AnswerRoute waits on it)
        yield
        await run_in_threadpool(app.state.dataset_jobs.close)

    app = FastAPI(
        lifespan=lifespan,
        title="ponderscope",
        description="Where adaptive-computation networks spend their effort: per-position ponder maps, per-layer gate decisions, "
                    "early exits, per-step ponder time of sequence models; each loaded model's family says how it decides (GET /api/models).",
        version=__version__,
    )
    app.state.store = store
    app.state.images = ImageStore(cache / "images", max_disk_bytes=image_store_bytes, max_memory_bytes=min(image_store_bytes, 64 << 20))
    app.state.dataset_jobs = DatasetJobs(cache)
    templates = Jinja2Templates(directory=str(resource("templates")))

    @app.exception_handler(ImageError)
    async def image_error(request: Request, error: ImageError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(NoTestSet)
    async def no_test_set(request: Request, error: NoTestSet):
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(DataSourceMissing)
    async def data_missing(request: Request, error: DataSourceMissing):
        # e.g. a checkout without scripts/setup.sh, or a wheel without its data: say what installs it
        setup = " (the whole set-up: bash scripts/setup.sh)" if CHECKOUT is not None else ""
        return JSONResponse({"detail": f"{error}{setup}; uploads still work"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        messages = []
        for item in error.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            messages.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return JSONResponse({"detail": "; ".join(messages) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        # Last resort: the page shows a message, and the log has the traceback.
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the server log"}, status_code=500)

    app.add_middleware(BodyLimit)
    # Answers are JSON of numbers (a photo's maps are tens of thousands of them): compressed on
    # the way when the client accepts it (every browser does), about 4x fewer bytes.
    app.add_middleware(GZipMiddleware, minimum_size=2048, compresslevel=5)
    app.add_middleware(AccessToken, policy=access or AccessPolicy())
    app.add_middleware(SecurityHeaders)  # added last: outermost, so the 413s have the headers too

    app.openapi = lambda: app.openapi_schema or document_access(document_loaded_models(FastAPI.openapi(app), store), access)
    app.include_router(models.router)
    app.include_router(images.router)
    app.include_router(sequences.router)
    app.include_router(studies.router)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # what browsers ask for on their own (the page's <link rel="icon"> names the same PNG)
        return FileResponse(resource("static") / "favicon.png", media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        return FileResponse(plotly_js_path(), media_type="application/javascript")

    app.mount("/static", StaticFiles(directory=str(resource("static"))), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request):
        summaries = [entry.summary() for entry in store.models.values()]
        return templates.TemplateResponse(request, "index.html", {"models": summaries, "version": app.version, "load_errors": store.errors})

    @app.get("/api/health", tags=["meta"], response_model=Health)
    async def health() -> dict:  # on the event loop: answers even while every worker thread is busy
        return {"status": "ok", "models": len(store.models), "device": store.device, "load_errors": store.errors,
                "request_threads": threads}

    return app


def run(host: str = "127.0.0.1", port: int = 8000, device: str = "auto", checkpoint_dirs: list[str] | None = None, cache_dir: str | None = None,
        data_roots: list[str] | None = None, image_store_bytes: int = DEFAULT_DISK_BYTES, analyses: list[str] | None = None,
        execution: str = "auto", token: str | None = None, no_token: bool = False, request_threads: int | None = None) -> None:
    """token / no_token: server/access.py's choose_policy (a token asked for beyond loopback)."""
    import socket

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    policy, warning = choose_policy(host, token, no_token, os.environ)
    app = create_app(checkpoint_dirs, device=device, cache_dir=cache_dir, data_roots=data_roots, image_store_bytes=image_store_bytes, analyses=analyses,
                     execution=execution, access=policy, request_threads=request_threads)
    config = uvicorn.Config(app, host=host, port=port, log_level="info")  # configures uvicorn's loggers: filtered after it
    for name in ("uvicorn.access", "uvicorn.error", "ponderscope"):
        logging.getLogger(name).addFilter(RedactTokens())
    if warning:
        log.warning(warning)
    log.info("serving %d models on %s%s", len(app.state.store.models), app.state.store.device,
             "; open the dashboard with its access token (the same one until the server stops):" if policy.token else "")
    for link in login_links(policy, host, port, socket.gethostname()):
        # the one place the token is written: print() passes no logging filter
        print(f"    {link}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
