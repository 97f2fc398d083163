"""Load test of the dashboard's HTTP API: `.venv/bin/python -m bench.load`.

Starts a real server (`python -m ponderscope serve` with the bundled checkpoints, on 127.0.0.1 and
a free port, with its own temporary `--cache` folder, OMP_NUM_THREADS=1 unless set), waits for
GET /api/health, and sends it a seeded mix of requests from 16 client threads (stdlib
http.client, one keep-alive connection per thread), the same mix in every run:

  * health, models: GET /api/health, GET /api/models;
  * samples: GET /api/models/{id}/samples?count=8 (image models with a test set);
  * sample_analysis: POST /api/models/{id}/image {"sample": k} (image models with a test set);
  * upload: POST /api/images, a small PNG drawn with Pillow (some repeat, some are new to the run);
  * image_by_hash: POST /api/models/{id}/image {"image": hash} (images uploaded before run 1);
  * multipart_analysis: POST /api/models/{id}/image with the PNG as the multipart field `file`;
  * text: POST /api/models/{id}/text, English sentences of 20-300 characters;
  * parity: POST /api/models/{id}/parity, a random -1/0/1 vector of the model's task.bits;
  * large_upload: a 12-megapixel JPEG (accepted); bomb_upload: a 50 KB PNG of 50 megapixels (413);
  * bad_*: requests that must be refused with a 4xx (unknown model 404, empty text 422,
    a non-image upload 4xx, an unknown image hash 404, a parity vector of the wrong length 422).

An error is a 5xx, a connection error or timeout, or any other unexpected status. Measured per
run: requests, errors (the first few described), wall time, requests/s, and per kind the count
and the p50 / p99 latency (ms, request sent to response read); the server's RSS (VmRSS of the
server's own python process) before the first run and after each run, and its growth between
the last two runs. Prints markdown tables; `--json PATH` writes the same figures as JSON. Exit
status 1 if any request failed or the RSS grew by 20% or more between the last two runs.

    .venv/bin/python -m bench.load                              # 3 runs of 1200 requests, 16 clients
    .venv/bin/python -m bench.load --requests 200 --runs 2     # a smoke test
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 120.0
GROWTH_LIMIT_PERCENT = 20.0
MAX_ERROR_SAMPLES = 5
SAMPLE_RANGE = 100  # test-set indices 0..99 (every bundled test set is larger)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Adaptive computation time lets a network decide how long to think.",
    "A hacker is a person who enjoys exploring the details of programmable systems and how to stretch their "
    "capabilities, as opposed to most users, who prefer to learn only the minimum necessary.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Spatially adaptive computation time spends more layers on the parts of the image that matter, and "
    "fewer on the plain background.",
    "Please send the report by Friday; the numbers for March are still missing.",
    "When in doubt, use brute force.",
    "The mean ponder cost per character rises at the start of a word and falls once the rest of the word "
    "is easy to predict from its first few letters, which is what one would hope a byte-level language "
    "model learns after enough training on English prose.",
    "Café au lait, naïve résumé: a few bytes beyond ASCII.",
    "Gates that close skip whole residual blocks for an image.",
    "Real programmers don't comment their code: if it was hard to write, it should be hard to read.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
]
assert all(20 <= len(s) <= 300 for s in SENTENCES), [len(s) for s in SENTENCES if not 20 <= len(s) <= 300]

# kind -> weight in the mix (kinds without a model to run on are dropped)
RESULTS = Path(__file__).resolve().parent / "load_results.md"
WEIGHTS = {
    "health": 6, "models": 4, "samples": 6, "sample_analysis": 14, "upload": 10, "image_by_hash": 12,
    "multipart_analysis": 10, "text": 12, "parity": 12,
    "bad_model": 2, "bad_text": 2, "bad_upload": 2, "bad_hash": 1, "bad_parity": 1,
    "large_upload": 1, "bomb_upload": 1,
}


def large_images() -> tuple[bytes, bytes]:
    """(a 12-megapixel photo-sized JPEG, accepted; a ~50 KB PNG of 7071x7071 = 50 megapixels,
    refused from its header with a 413): what a hostile or careless client sends."""
    from PIL import Image, ImageDraw

    photo = Image.radial_gradient("L").resize((4000, 3000)).convert("RGB")
    ImageDraw.Draw(photo).ellipse((800, 600, 3200, 2400), fill=(200, 120, 40))
    jpeg, bomb = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, "JPEG", quality=85)
    Image.new("L", (7071, 7071)).save(bomb, "PNG")
    return jpeg.getvalue(), bomb.getvalue()


# ------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Server:
    """`python -m ponderscope serve` as a direct child (no shell: the pid is the server's)."""

    def __init__(self, port: int, cache: Path, log_path: Path, device: str, checkpoints: list[str] | None = None):
        self.port, self.log_path = port, log_path
        env = dict(os.environ, PONDERSCOPE_CACHE=str(cache))
        env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, "-m", "ponderscope", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--cache", str(cache), "--device", device]
        for folder in checkpoints or []:  # a fixed set of models: the same mix for two commits that bundle different ones
            command += ["--checkpoints", str(Path(folder).resolve())]
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with status {self.process.returncode} before answering:\n{self.log_tail()}")
            try:
                status, body = get_json(self.port, "/api/health", timeout=5)
                if status == 200:
                    return body
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server did not answer GET /api/health within {timeout:.0f} s:\n{self.log_tail()}")

    def check_process(self) -> None:
        """The pid must be the python process serving (RSS is read from it)."""
        cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        if not (Path(cmdline[0].decode()).name.startswith("python") and b"ponderscope" in cmdline and b"serve" in cmdline):
            raise SystemExit(f"pid {self.pid} is not the python server: {cmdline}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def error_lines(self, limit: int = 60) -> list[str]:
        """ERROR lines of the server log with the traceback lines that follow them."""
        out, keep = [], False
        for line in self.log_path.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("ERROR"):
                keep = True
            elif line[:4].isdigit() or line.startswith("INFO"):  # the next timestamped / uvicorn line
                keep = False
            if keep:
                out.append(line)
        return out[:limit]


def get_json(port: int, path: str, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ the mix


def png(rng: random.Random, size: int | None = None) -> bytes:
    """A small PNG: a random background, a few random rectangles and ellipses, L or RGB."""
    from PIL import Image, ImageDraw

    mode = rng.choice(["L", "RGB"])
    w, h = size or rng.randint(24, 96), size or rng.randint(24, 96)
    colour = (lambda: rng.randint(0, 255)) if mode == "L" else (lambda: tuple(rng.randint(0, 255) for _ in range(3)))
    image = Image.new(mode, (w, h), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 5)):
        x0, y0 = rng.randint(0, w - 2), rng.randint(0, h - 2)
        box = (x0, y0, rng.randint(x0 + 1, w), rng.randint(y0 + 1, h))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(data: bytes, filename: str, content_type: str = "image/png") -> tuple[bytes, dict]:
    boundary = "ponderscope-load-" + hashlib.sha1(data).hexdigest()[:16]
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def json_body(payload) -> tuple[bytes, dict]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


def build_mix(models: list[dict], n: int, seed: int, known: list[bytes], known_hashes: list[str], fresh: list[bytes]) -> list[dict]:
    """n requests drawn with `seed`: dicts with kind, method, path, body, headers, expected statuses.
    known_hashes: the hashes the server gave the `known` images (what it hashes is its business)."""
    rng = random.Random(seed)
    large = large_images()
    image = [m for m in models if m["kind"] == "image"]
    with_test = [m for m in image if m.get("test_set")]
    text = [m for m in models if m["kind"] == "text"]
    parity = [m for m in models if m["kind"] == "parity"]
    needs = {"samples": with_test, "sample_analysis": with_test, "image_by_hash": image, "multipart_analysis": image,
             "text": text, "parity": parity, "bad_text": text, "bad_hash": image, "bad_parity": parity}
    kinds = [k for k in WEIGHTS if needs.get(k, True)]
    weights = [WEIGHTS[k] for k in kinds]

    def any_image() -> tuple[bytes, str]:  # half repeat the primed images, half the run's other ones
        return (rng.choice(known), "known.png") if rng.random() < 0.5 else (rng.choice(fresh), "fresh.png")

    mix = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        method, body, headers, expected = "POST", None, {}, (200,)
        if kind == "health":
            method, path = "GET", "/api/health"
        elif kind == "models":
            method, path = "GET", "/api/models"
        elif kind == "samples":
            method, path = "GET", f"/api/models/{rng.choice(with_test)['id']}/samples?count=8&offset={rng.randrange(0, SAMPLE_RANGE - 8)}"
        elif kind == "sample_analysis":
            path = f"/api/models/{rng.choice(with_test)['id']}/image"
            body, headers = json_body({"sample": rng.randrange(SAMPLE_RANGE)})
        elif kind == "upload":
            path = "/api/images"
            body, headers = multipart(*any_image())
        elif kind == "image_by_hash":
            path = f"/api/models/{rng.choice(image)['id']}/image"
            body, headers = json_body({"image": rng.choice(known_hashes)})
        elif kind == "multipart_analysis":
            path = f"/api/models/{rng.choice(image)['id']}/image"
            body, headers = multipart(*any_image())
        elif kind == "text":
            path = f"/api/models/{rng.choice(text)['id']}/text"
            body, headers = json_body({"text": rng.choice(SENTENCES)})
        elif kind == "parity":
            model = rng.choice(parity)
            path = f"/api/models/{model['id']}/parity"
            body, headers = json_body({"vector": [rng.choice((-1, 0, 1)) for _ in range(int(model["task"]["bits"]))]})
        elif kind == "large_upload":
            path = "/api/images"
            body, headers = multipart(large[0], "photo.jpg")
        elif kind == "bomb_upload":
            path, expected = "/api/images", (413,)
            body, headers = multipart(large[1], "bomb.png")
        elif kind == "bad_model":
            path, expected = "/api/models/no-such-model/text", (404,)
            body, headers = json_body({"text": rng.choice(SENTENCES)})
        elif kind == "bad_text":
            path, expected = f"/api/models/{rng.choice(text)['id']}/text", (422,)
            body, headers = json_body({"text": ""})
        elif kind == "bad_upload":
            path, expected = "/api/images", tuple(range(400, 500))
            body, headers = multipart(b"this is plain text, not an image\n" * rng.randint(1, 20), "notes.png")
        elif kind == "bad_hash":
            path, expected = f"/api/models/{rng.choice(image)['id']}/image", (404,)
            body, headers = json_body({"image": "%064x" % rng.getrandbits(256)})
        elif kind == "bad_parity":
            model = rng.choice(parity)
            path, expected = f"/api/models/{model['id']}/parity", (422,)
            body, headers = json_body({"vector": [1] * (int(model["task"]["bits"]) + 1)})
        else:
            raise AssertionError(kind)
        mix.append({"kind": kind, "method": method, "path": path, "body": body, "headers": headers, "expected": expected})
    return mix


# ------------------------------------------------------------------------------------ a run


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else float("nan")


def one_run(port: int, mix: list[dict], clients: int, timeout: float) -> dict:
    results: list[tuple | None] = [None] * len(mix)  # (latency s, error description or None)
    next_index = iter(range(len(mix)))
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            request = mix[i]
            started = time.perf_counter()
            error = None
            try:
                conn.request(request["method"], request["path"], body=request["body"], headers=request["headers"])
                response = conn.getresponse()
                data = response.read()
                if response.status not in request["expected"]:
                    error = f"{response.status} on {request['method']} {request['path']} ({request['kind']}): {data[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc} on {request['method']} {request['path']} ({request['kind']})"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            results[i] = (time.perf_counter() - started, error)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started

    kinds: dict[str, dict] = {}
    errors = []
    for request, (latency, error) in zip(mix, results):
        entry = kinds.setdefault(request["kind"], {"latencies": [], "errors": 0})
        entry["latencies"].append(latency)
        if error:
            entry["errors"] += 1
            errors.append(error)
    per_kind = {}
    for kind in WEIGHTS:
        if kind in kinds:
            values = sorted(kinds[kind]["latencies"])
            per_kind[kind] = {"count": len(values), "errors": kinds[kind]["errors"],
                              "p50_ms": round(percentile(values, 0.50) * 1e3, 1), "p99_ms": round(percentile(values, 0.99) * 1e3, 1)}
    return {"requests": len(mix), "errors": len(errors), "error_samples": errors[:MAX_ERROR_SAMPLES], "wall_s": round(wall, 2),
            "requests_per_s": round(len(mix) / wall, 1), "kinds": per_kind}


# ------------------------------------------------------------------------------------ report


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(result: dict) -> str:
    runs = result["runs"]
    lines = ["# Load test", "",
             f"Command: `{result['command']}` ({result['date']}); server: {result['server']['models']} models on "
             f"{result['server']['device']}, {result['clients']} client threads, {result['requests']} requests a run "
             f"(seed {result['seed']}), {len(runs)} runs.", ""]
    if result["server"]["load_errors"]:
        lines += [f"Server load errors: {result['server']['load_errors']}", ""]
    lines += [row(["run", "requests", "errors", "wall s", "requests/s", "RSS after, MB"]), row(["---"] * 6)]
    for i, run in enumerate(runs):
        lines.append(row([i + 1, run["requests"], run["errors"], f"{run['wall_s']:.1f}", f"{run['requests_per_s']:.1f}",
                          f"{result['rss_kb']['after'][i] / 1024:.1f}"]))
    lines += ["", f"RSS before run 1: {result['rss_kb']['before'] / 1024:.1f} MB; growth between the last two measurements "
              f"({result['growth_between']}): **{result['rss_growth_percent']:+.2f}%** (limit {GROWTH_LIMIT_PERCENT:.0f}%).", ""]
    header = ["kind", "count"] + [f"run {i + 1} {q}" for i in range(len(runs)) for q in ("p50 ms", "p99 ms")]
    lines += ["Latency per kind (request sent to response read):", "", row(header), row(["---"] * len(header))]
    for kind, first in runs[0]["kinds"].items():
        cells = [kind, first["count"]]
        for run in runs:
            cells += [f"{run['kinds'][kind]['p50_ms']:.1f}", f"{run['kinds'][kind]['p99_ms']:.1f}"]
        lines.append(row(cells))
    for i, run in enumerate(runs):
        if run["errors"]:
            lines += ["", f"Run {i + 1}: {run['errors']} error(s), the first {len(run['error_samples'])}:"]
            lines += [f"  * {e}" for e in run["error_samples"]]
    if result["server_error_log"]:
        lines += ["", "Server log, ERROR lines:", "", "```", *result["server_error_log"], "```"]
    lines += ["", "Result: " + ("ok" if result["ok"] else "FAILED (" + "; ".join(result["failures"]) + ")")]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Load test: a real server, a seeded mix of API requests from concurrent clients")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=1200, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a client waits for one response")
    parser.add_argument("--device", default="cpu", help="the server's --device")
    parser.add_argument("--checkpoints", action="append", metavar="DIR",
                        help="the server's --checkpoints (repeatable; default: the bundled ones); the mix follows the models served")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--server-log", metavar="PATH", help="keep the server's log here (default: a temporary file)")
    parser.add_argument("--write", action="store_true", help="write the tables to bench/load_results.md and README's reliability section")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.requests < 1 or args.clients < 1:
        parser.error("--runs, --requests and --clients must be >= 1")

    with tempfile.TemporaryDirectory(prefix="ponderscope-load-") as tmp:
        port = free_port()
        server = Server(port, Path(tmp) / "cache", Path(args.server_log or Path(tmp) / "server.log"), args.device, args.checkpoints)
        try:
            health = server.wait_healthy()
            server.check_process()
            status, models = get_json(port, "/api/models")
            if status != 200:
                raise SystemExit(f"GET /api/models answered {status}")
            rng = random.Random(args.seed + 1)
            known = [png(rng) for _ in range(8)]  # uploaded before run 1, so that image_by_hash finds them
            fresh = [png(rng) for _ in range(16)]  # first seen in run 1 (uploaded again in later runs)
            known_hashes = []
            for data in known:
                body, headers = multipart(data, "known.png")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
                conn.request("POST", "/api/images", body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                conn.close()
                if response.status != 200:
                    raise SystemExit(f"priming upload answered {response.status}: {answer[:300]!r}")
                known_hashes.append(json.loads(answer)["hash"])
            mix = build_mix(models, args.requests, args.seed, known, known_hashes, fresh)
            before = rss_kb(server.pid)
            runs, after = [], []
            for i in range(args.runs):
                runs.append(one_run(port, mix, args.clients, args.timeout))
                after.append(rss_kb(server.pid))
                print(f"run {i + 1}/{args.runs}: {runs[-1]['requests']} requests, {runs[-1]['errors']} errors, "
                      f"{runs[-1]['wall_s']:.1f} s, RSS {after[-1] / 1024:.1f} MB", file=sys.stderr, flush=True)
            if server.process.poll() is not None:
                raise SystemExit(f"the server died during the test:\n{server.log_tail()}")
        finally:
            server.stop()
        error_log = server.error_lines()

    previous = after[-2] if len(after) > 1 else before
    growth = (after[-1] - previous) / previous * 100.0
    failures = []
    if sum(r["errors"] for r in runs):
        failures.append(f"{sum(r['errors'] for r in runs)} request error(s)")
    if growth >= GROWTH_LIMIT_PERCENT:
        failures.append(f"RSS grew {growth:.1f}% between the last two runs")
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command.strip(), "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "clients": args.clients, "requests": args.requests, "seed": args.seed,
        "server": {"models": health.get("models"), "device": health.get("device"), "load_errors": health.get("load_errors"),
                   "model_ids": {m["id"]: m["kind"] for m in models}},
        "rss_kb": {"before": before, "after": after},
        "growth_between": f"after run {len(after) - 1}, after run {len(after)}" if len(after) > 1 else "before and after run 1",
        "rss_growth_percent": round(growth, 2),
        "runs": runs, "server_error_log": error_log, "ok": not failures, "failures": failures,
    }
    print(report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.write:
        from ponderscope.readme import replace_section

        RESULTS.write_text(report(result) + "\n", encoding="utf-8")
        replace_section("reliability", report(result).split("\n", 1)[1])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
