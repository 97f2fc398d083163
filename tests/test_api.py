"""The JSON API against the real bundled checkpoints: values, every accepted image format, and
clear 4xx errors for bad input."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ponderscope import models
from ponderscope.server.app import create_app
from ponderscope.server.references import resolve
from ponderscope.core.imaging import MAX_UPLOAD_BYTES, prepare
from tests.conftest import TEST_DEVICE

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SACT = "fmnist_sact_resnet32"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app([CHECKPOINTS], device=TEST_DEVICE, cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(app) as c:
        yield c


def png(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def shirt_like() -> Image.Image:
    image = Image.new("L", (56, 56), 0)
    for y in range(10, 46):
        for x in range(14, 42):
            image.putpixel((x, y), 200)
    return image


def upload(client, data: bytes, name="x.png", content_type="image/png"):
    return client.post("/api/images", files={"file": (name, data, content_type)})


def test_models_listed_with_cards(client):
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert {"fmnist_sact_resnet32", "fmnist_aig_resnet32", "jargon_act_lstm", "parity16_act_rnn"} <= set(listed)
    sact = listed[SACT]
    assert sact["family"] == "sact" and sact["kind"] == "image" and sact["dataset"] == "fashion-mnist"
    assert sact["metrics"]["test"]["accuracy"] == models.read_card(CHECKPOINTS / SACT)["metrics"]["test"]["accuracy"]
    assert listed["fmnist_aig_resnet32"]["family"] == "aig"
    assert listed["jargon_act_lstm"]["kind"] == "text"


def test_image_analysis_matches_the_model(client):
    data = png(shirt_like())
    digest = upload(client, data).json()["hash"]
    result = client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()
    # Recompute directly through the library: the API must report exactly the model's numbers.
    model = models.load_checkpoint(CHECKPOINTS / SACT)
    x, _ = prepare(shirt_like(), model.card.preprocess, "train")
    with torch.no_grad():
        trace = model.trace(x)
    probabilities = torch.softmax(trace.logits[0], -1)
    assert result["prediction"][0]["index"] == int(probabilities.argmax())
    assert result["prediction"][0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert len(result["prediction"]) == 5
    ponder = result["ponder"]
    assert len(ponder["total"]) == 28 and len(ponder["total"][0]) == 28
    assert [b["grid"]["height"] for b in ponder["blocks"]] == [28, 14, 7]
    expected_total = trace.ponder_map()[0]  # block maps summed at the first block's resolution (= input)
    assert torch.tensor(ponder["total"]) == pytest.approx(expected_total, abs=1e-3)
    assert ponder["blocks"][1]["mean_ponder"] == pytest.approx(float(trace.blocks[1].ponder_cost.mean()), abs=1e-5)
    assert result["flops"]["ratio"] == pytest.approx(float(trace.flops[0] / trace.dense_flops), rel=1e-6)
    assert result["time_ms"] > 0


def test_native_resolution_is_fully_convolutional(client):
    digest = upload(client, png(shirt_like().resize((90, 60)))).json()["hash"]
    result = client.post(f"/api/models/{SACT}/image", json={"image": digest, "resolution": "native"}).json()
    assert result["input"]["width"] == 90 and result["input"]["height"] == 60
    assert len(result["ponder"]["total"]) == 60 and len(result["ponder"]["total"][0]) == 90


def test_sample_and_cluttered_box(client):
    result = client.post("/api/models/cluttered_sact_resnet20/image", json={"sample": 0}).json()
    y0, x0, y1, x1 = result["input"]["box"]
    assert 0 <= y0 < y1 <= 60 and 0 <= x0 < x1 <= 60
    assert result["input"]["label"] in range(10)
    samples = client.get("/api/models/fmnist_aig_resnet32/samples?count=5").json()
    assert [s["index"] for s in samples] == [0, 1, 2, 3, 4]
    assert samples[0]["image"].startswith("data:image/png;base64,")


def test_aig_gates(client):
    result = client.post("/api/models/fmnist_aig_resnet32/image", json={"sample": 1}).json()
    gates = result["gates"]
    assert len(gates["probability"]) == len(gates["executed"]) == len(gates["layers"]) == 15
    assert all((p > 0.5) == e for p, e in zip(gates["probability"], gates["executed"]))
    assert result["ponder"] is None


def test_text_per_character(client):
    text = "Hello, world. Ünïcode 123"
    result = client.post("/api/models/jargon_act_lstm/text", json={"text": text}).json()
    assert "".join(c["char"] for c in result["chars"]) == text
    assert result["chars"][0]["bits"] is None and all(c["bits"] > 0 for c in result["chars"][1:])
    assert all(c["steps"] >= 1 and c["ponder"] >= c["steps"] for c in result["chars"])
    assert result["bytes"] == len(text.encode("utf-8"))


def test_parity(client):
    vector = [1, -1, 0, 1] + [0] * 12
    result = client.post("/api/models/parity16_act_rnn/parity", json={"vector": vector}).json()
    assert result["nonzero"] == 3 and result["ones"] == 2
    # the model's own numbers, recomputed through the library; two +1 entries: the parity is even
    model = models.load_checkpoint(CHECKPOINTS / "parity16_act_rnn")
    with torch.no_grad():
        trace = model.trace(torch.tensor([vector], dtype=torch.float32))
    probabilities = torch.softmax(trace.logits[0], -1)
    assert result["answer"] == ["even", "odd"][int(probabilities.argmax())] == "even"
    assert result["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert result["steps"] == int(trace.steps[0, 0]) and result["ponder"] == pytest.approx(float(trace.ponder[0, 0]), abs=1e-5)
    assert result["ponder"] >= result["steps"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: png(shirt_like().convert("RGBA")),
        lambda: png(shirt_like().convert("P")),
        lambda: png(shirt_like().convert("I;16")),
        lambda: png(shirt_like().convert("RGB"), "JPEG"),
        lambda: png(shirt_like().convert("CMYK"), "JPEG"),
        lambda: png(shirt_like(), "GIF", save_all=True, append_images=[Image.new("L", (56, 56), 255)]),
        lambda: png(shirt_like(), "WEBP"),
        lambda: png(shirt_like(), "BMP"),
        lambda: png(shirt_like(), "TIFF"),
    ],
    ids=["rgba", "palette", "16bit", "jpeg", "cmyk", "gif-animated", "webp", "bmp", "tiff"],
)
def test_formats_accepted(client, make):
    response = upload(client, make())
    assert response.status_code == 200, response.text
    result = client.post(f"/api/models/{SACT}/image", json={"image": response.json()["hash"]})
    assert result.status_code == 200
    assert len(result.json()["ponder"]["total"]) == 28


def test_exif_rotation_applied(client):
    image = Image.new("L", (40, 20), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    response = upload(client, png(image.convert("RGB"), "JPEG", exif=exif.tobytes()))
    assert response.status_code == 200
    assert (response.json()["width"], response.json()["height"]) == (20, 40)


def test_16bit_scaled_not_clipped(client):
    image = Image.new("I;16", (30, 30), 30000)  # about 46% of the 16-bit range
    digest = upload(client, png(image)).json()["hash"]
    result = client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()
    import base64

    shown = Image.open(io.BytesIO(client.get(result["input"]["image"]).content))  # the image as the model saw it, at its own URL
    assert abs(shown.getpixel((5, 5)) - round(30000 / 65535 * 255)) <= 1


def _giant_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with a tiny compressed body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, "empty"),
        (b"this is not an image at all", 422, "not an image"),
        (png(shirt_like())[:60], 422, "corrupt"),
        (_giant_png(8000, 7000), 413, "megapixels"),
    ],
    ids=["empty", "not-image", "truncated", "over-50-megapixels"],
)
def test_bad_uploads(client, data, status, words):
    response = upload(client, data)
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_upload_over_20_mb(client):
    response = upload(client, b"\x00" * (21 * 1024 * 1024))
    assert response.status_code == 413
    assert "20 MB" in response.json()["detail"]


def test_request_errors(client):
    assert client.post("/api/models/nope/image", json={"sample": 0}).status_code == 404
    r = client.post(f"/api/models/{SACT}/image", json={"sample": 10_000_000})
    assert r.status_code == 404 and "out of range" in r.json()["detail"]
    r = client.post(f"/api/models/{SACT}/image", json={})
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]
    r = client.post(f"/api/models/{SACT}/image", json={"image": "0" * 64})
    assert r.status_code == 404
    r = client.post(f"/api/models/{SACT}/image", content=b"not json", headers={"content-type": "text/plain"})
    assert r.status_code == 422
    r = client.post("/api/models/jargon_act_lstm/text", json={"text": "x" * 10_001})
    assert r.status_code == 413 and "10000" in r.json()["detail"]
    r = client.post("/api/models/jargon_act_lstm/text", json={"text": "😀" * 2_501})  # 2,501 characters, 10,004 bytes
    assert r.status_code == 413 and "10004 UTF-8 bytes" in r.json()["detail"]
    assert client.post("/api/models/jargon_act_lstm/text", json={"text": "😀" * 2_500}).status_code == 200
    r = client.post("/api/models/jargon_act_lstm/text", json={"text": ""})
    assert r.status_code == 422
    r = client.post(f"/api/models/{SACT}/text", json={"text": "hi"})
    assert r.status_code == 400 and "text model" in r.json()["detail"]
    r = client.post("/api/models/parity16_act_rnn/parity", json={"vector": [2] * 16})
    assert r.status_code == 422
    r = client.post("/api/models/parity16_act_rnn/parity", json={"vector": [1] * 3})
    assert r.status_code == 422 and "16" in r.json()["detail"]
    r = client.post("/api/images", data={"file": "not a file"})
    assert r.status_code == 422


def analyse(client, model_id, data: bytes, name="shirt.png", content_type="image/png", **options):
    """One multipart request, as `curl -F file=@shirt.png -F resolution=native URL` sends it."""
    return client.post(f"/api/models/{model_id}/image", files={"file": (name, data, content_type)}, data=options)


def test_image_analysis_in_one_multipart_request(client):
    data = png(shirt_like().convert("RGB"))
    response = analyse(client, SACT, data)
    assert response.status_code == 200, response.text
    one_step = response.json()
    digest = one_step["input"]["hash"]
    assert one_step["input"]["resolution"] == "train"
    stored = client.get(f"/api/images/{digest}").content  # stored: the hash works again
    assert hashlib.sha256(stored).hexdigest() == digest  # the hash names what is stored: the decoded pixels as PNG
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(Image.open(io.BytesIO(data))))
    two_steps = client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()
    assert one_step["prediction"] == two_steps["prediction"] and one_step["ponder"] == two_steps["ponder"]

    options = analyse(client, SACT, data, resolution="native", invert="true").json()
    assert options["input"]["resolution"] == "native" and (options["input"]["width"], options["input"]["height"]) == (56, 56)
    shown = Image.open(io.BytesIO(client.get(options["input"]["image"]).content))
    assert shown.getpixel((0, 0)) == 255 and shown.getpixel((28, 28)) == 255 - 200  # inverted
    again = client.post(f"/api/models/{SACT}/image", json={"image": digest, "resolution": "native", "invert": True}).json()
    assert options["prediction"] == again["prediction"] and options["ponder"] == again["ponder"]

    gates = analyse(client, "fmnist_aig_resnet32", data, invert="false").json()["gates"]
    assert len(gates["executed"]) == 15


@pytest.mark.parametrize(
    "send, status, words",
    [
        (lambda c: analyse(c, SACT, b""), 400, "empty"),
        (lambda c: analyse(c, SACT, b"this is not an image at all", "notes.txt", "text/plain"), 422, "not an image"),
        (lambda c: analyse(c, SACT, png(shirt_like())[:60]), 422, "corrupt"),
        (lambda c: analyse(c, SACT, b"\x00" * (MAX_UPLOAD_BYTES + 1000)), 413, "20 MB"),  # read_upload's limit
        (lambda c: analyse(c, SACT, png(shirt_like()), resolution="huge"), 422, "resolution"),
        (lambda c: analyse(c, SACT, png(shirt_like()), invert="maybe"), 422, "invert"),
        (lambda c: analyse(c, SACT, png(shirt_like()), sample="3"), 422, "unknown form field(s) sample"),
        (lambda c: c.post(f"/api/models/{SACT}/image", files={"resolution": (None, "train")}), 422, "file field 'file'"),
        (lambda c: c.post(f"/api/models/{SACT}/image", data={"resolution": "train"}), 422, "multipart form"),
        (lambda c: c.post(f"/api/models/{SACT}/image", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400, "boundary"),
        (lambda c: c.post(f"/api/models/{SACT}/image", files=[("file", ("a.png", png(shirt_like()))), ("file", ("b.png", png(shirt_like())))]), 400, "Too many files"),
        (lambda c: analyse(c, "jargon_act_lstm", png(shirt_like())), 400, "image model"),
        (lambda c: analyse(c, "nope", png(shirt_like())), 404, "unknown model"),
    ],
    ids=["empty", "not-image", "truncated", "over-20-mb", "bad-resolution", "bad-invert", "unknown-field", "no-file", "urlencoded", "no-boundary", "two-files", "text-model", "unknown-model"],
)
def test_bad_multipart_requests(client, send, status, words):
    response = send(client)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert client.get(f"/api/images/{hashlib.sha256(b'this is not an image at all').hexdigest()}").status_code == 404


def test_concurrent_requests_agree(client):
    digest = upload(client, png(shirt_like())).json()["hash"]

    def call(_):
        return client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()["prediction"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(12)))
    assert all(r == results[0] for r in results)


def test_page_and_assets_offline(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "https://" not in page.text.split("<body")[0]  # nothing fetched from the internet
    assert "/static/vendor/plotly.min.js" in page.text
    plotly = client.get("/static/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert client.get("/docs").status_code == 200
    operation = client.get("/openapi.json").json()["paths"]["/api/models/{model_id}/image"]["post"]
    body = operation["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"image", "sample", "resolution", "invert"} <= set(body["application/json"]["schema"]["properties"])
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"file", "resolution", "invert"}


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"sample": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"x" * (70 * 1024)])
def test_hostile_json_bodies_get_a_message(client, body):
    model_id = next(m["id"] for m in client.get("/api/models").json() if m["kind"] == "image")
    response = client.post(f"/api/models/{model_id}/image", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (413, 422), response.text
    assert response.json()["detail"]


def test_chunked_json_body_is_bounded(client):
    model_id = next(m["id"] for m in client.get("/api/models").json() if m["kind"] == "image")

    def chunks():
        for _ in range(100):
            yield b" " * 8192  # 800 KB of whitespace, no Content-Length

    response = client.post(f"/api/models/{model_id}/image", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "JSON body" in response.json()["detail"]


def test_text_classes_and_measure(client):
    model_id = next(m["id"] for m in client.get("/api/models").json() if m["kind"] == "text" and m["family"] == "act-rnn")
    text = "Ok, 7 é."
    body = client.post(f"/api/models/{model_id}/text", json={"text": text}).json()
    assert [c["class"] for c in body["chars"]] == ["word_start", "letter", "punctuation", "space", "digit", "space", "word_start", "punctuation"]
    assert [c["bytes"] for c in body["chars"]] == [1, 1, 1, 1, 1, 1, 2, 1]
    for name, summary in body["classes"].items():
        members = [c for c in body["chars"] if c["class"] == name]
        assert summary["count"] == len(members)
        assert abs(summary["steps"] - sum(c["steps"] for c in members) / len(members)) < 1e-9
        assert abs(summary["ponder"] - sum(c["ponder"] for c in members) / len(members)) < 1e-9
    assert body["measure"] == ("steps" if len({c["steps"] for c in body["chars"]}) > 1 else "ponder")


def test_text_measure_is_what_varies(client):
    """The bundled ACT-LSTM takes 2 steps at spaces and 1 inside words: colour by N; the plain
    LSTM always takes 1 step: colour by N + R."""
    act = client.post("/api/models/jargon_act_lstm/text", json={"text": "The cat sat on the mat."}).json()
    assert act["measure"] == "steps" and {c["steps"] for c in act["chars"]} >= {1.0, 2.0}
    plain = client.post("/api/models/jargon_lstm/text", json={"text": "The cat sat on the mat."}).json()
    assert plain["measure"] == "ponder" and {c["steps"] for c in plain["chars"]} == {1.0}


def test_text_model_corpus_statistics(client):
    """The Text view's corpus panel: per class mean and spread of N and N + R over held-out text."""
    import time

    model_id = next(m["id"] for m in client.get("/api/models").json() if m["kind"] == "text" and m["name"].startswith("act_"))
    deadline = time.time() + 120
    while True:
        status = client.get(f"/api/models/{model_id}/dataset").json()
        if status["status"] != "running" or time.time() > deadline:
            break
        time.sleep(0.5)
    assert status["status"] == "done", status
    result = status["result"]
    classes = result["per_char_class"]
    assert {"space", "word_start", "letter"} <= set(classes)
    assert sum(c["count"] for c in classes.values()) == result["bytes"] >= 20000
    for c in classes.values():
        assert 1.0 <= c["steps"] <= result["max_steps"] and c["steps_std"] >= 0 and c["ponder"] >= c["steps"]
    assert 0.0 <= result["steps_off_mode_fraction"] <= 1.0 and -1.0 <= result["corr_ponder_surprisal"] <= 1.0
    assert client.get("/api/models/parity16_act_rnn/dataset").status_code == 400


def test_corpus_measured_by_the_server_without_card_metrics(tmp_path):
    """A byte LM whose card has no held-out statistics: the server measures 20,000 bytes once,
    caches the answer, and a re-evaluated card is a new cache entry."""
    import shutil
    import time

    from ponderscope.models.checkpoint import read_card, write_card

    shutil.copytree(CHECKPOINTS / "jargon_act_lstm", tmp_path / "ckpts" / "lm")
    card = read_card(tmp_path / "ckpts" / "lm")
    reference = card.pop("metrics")["test"]
    write_card(tmp_path / "ckpts" / "lm", card)
    app = create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache")
    with TestClient(app) as c:
        deadline = time.time() + 120
        while (status := c.get("/api/models/lm/dataset").json())["status"] == "running" and time.time() < deadline:
            time.sleep(0.5)
        result = status["result"]
        assert status["status"] == "done" and result["bytes"] == 20000 and "measured by the server" in result["source"]
        # the first 20,000 held-out bytes against the whole held-out text: the same model, near numbers
        assert abs(result["per_char_class"]["space"]["steps"] - reference["per_char_class"]["space"]["steps"]) < 0.1
        assert sum(c["count"] for c in result["per_char_class"].values()) == 20000
    assert len(list((tmp_path / "cache").glob("dataset-lm-*.json"))) == 1


@pytest.mark.parametrize("escaped, expected, replaced", [
    ("ab\\ud800cd", "ab\ufffdcd", 1),  # lone high surrogate
    ("\\udc00\\ud800x", "\ufffd\ufffdx", 2),  # reversed pair
    ("\\ud83d\\ude00!", "\U0001F600!", 0),  # a real pair is one character, 4 bytes
])
def test_text_with_lone_surrogates_gets_an_answer(client, escaped, expected, replaced):
    body = ('{"text": "%s"}' % escaped).encode()  # JSON may escape a lone surrogate; Python's str holds it, UTF-8 cannot
    response = client.post("/api/models/jargon_act_lstm/text", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert "".join(c["char"] for c in result["chars"]) == expected and result["replaced_surrogates"] == replaced
    assert sum(c["bytes"] for c in result["chars"]) == len(expected.encode("utf-8"))


def test_missing_data_set_is_a_503_with_the_install_command(tmp_path, monkeypatch):
    """Fashion-MNIST not installed (a plain pip install): samples answer 503 saying what installs
    it, and an upload to the same model still works."""
    import io

    from PIL import Image

    monkeypatch.setenv("PONDERSCOPE_FASHION_MNIST", str(tmp_path / "nothing-here"))
    app = create_app([CHECKPOINTS / "fmnist_sact_resnet32"], device="cpu", cache_dir=tmp_path / "cache")
    with TestClient(app) as c:
        for method, path, body in (("GET", "/api/models/fmnist_sact_resnet32/samples", None),
                                   ("GET", "/api/models/fmnist_sact_resnet32/samples/0.png", None),
                                   ("POST", "/api/models/fmnist_sact_resnet32/image", {"sample": 0})):
            response = c.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            detail = response.json()["detail"]
            assert "apt-get install dataset-fashion-mnist" in detail and "bash scripts/setup.sh" in detail
        buffer = io.BytesIO()
        Image.new("L", (28, 28), 128).save(buffer, format="PNG")
        upload = c.post("/api/models/fmnist_sact_resnet32/image", files={"file": ("grey.png", buffer.getvalue(), "image/png")})
        assert upload.status_code == 200 and upload.json()["ponder"]["total"]


def test_security_headers_on_every_kind_of_response(client):
    from ponderscope.server.app import SECURITY_HEADERS

    for path in ("/", "/api/models", "/static/app.js", "/static/vendor/plotly.min.js", "/api/models/no_such_model"):
        response = client.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
    assert "script-src 'self';" in SECURITY_HEADERS["Content-Security-Policy"]  # no inline script, no eval


def test_image_folder_cards_are_read_only_inside_a_data_root(tmp_path):
    """A card naming dataset "imagefolder:PATH" cannot make the server show any folder's images:
    PATH must lie inside a folder given with serve --data-root."""
    from PIL import Image

    from ponderscope.models import create_model, save_checkpoint

    data = tmp_path / "data" / "shapes"
    for label, shade in (("dark", 40), ("light", 220)):
        (data / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), shade + i).save(data / label / f"{i}.png")
    model = create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=2)
    card = {"task": {"name": "classify"}, "dataset": f"imagefolder:{data}", "classes": ["dark", "light"],
            "preprocess": {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]}, "config": {"data_options": {"channels": 1}}}
    save_checkpoint(model, tmp_path / "ckpts" / "folder_model", card)
    outside = TestClient(create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "c1"))
    listed = outside.get("/api/models").json()[0]
    assert listed["test_set"] is False
    response = outside.get("/api/models/folder_model/samples")
    assert response.status_code == 404 and "outside the folders this server may read" in response.json()["detail"]
    inside = TestClient(create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "c2", data_roots=[tmp_path / "data"]))
    assert inside.get("/api/models").json()[0]["test_set"] is True
    samples = inside.get("/api/models/folder_model/samples").json()
    assert len(samples) >= 1 and {s["class"] for s in samples} <= {"dark", "light"}


# ------------------------------------------------------------------ figures beside the numbers
def flat(z):
    return [v for row in z for v in row]


def test_image_answers_carry_their_figures(client):
    """The page draws these as they are (ponderscope.figures, the notebook's code): the ponder map
    over the input, every block's map, the gates; their numbers are the answer's own."""
    digest = upload(client, png(shirt_like())).json()["hash"]
    sent = client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()
    assert sent["figures"]["map"]["data"][0]["z"] == {"$ref": "ponder.total"}  # the map's cells travel once, as numbers
    result = resolve(sent)  # as the page puts them back
    ponder, figures = result["ponder"], result["figures"]
    assert set(figures) == {"map", "blocks"}
    heat = figures["map"]["data"][0]
    assert heat["type"] == "heatmap" and heat["z"] == ponder["total"]
    assert (heat["zmin"], heat["zmax"]) == (ponder["min"], ponder["max"]) == (min(flat(ponder["total"])), max(flat(ponder["total"])))
    image = figures["map"]["layout"]["images"][0]
    assert image["source"] == result["input"]["image"] and (image["sizex"], image["sizey"]) == (28, 28) and image["layer"] == "below"
    assert "template" not in figures["map"]["layout"]  # plotly.py's theme stays out of the answers
    blocks = figures["blocks"]
    assert [t["z"] for t in blocks["data"]] == [b["ponder_cost"] for b in ponder["blocks"]]
    assert len(blocks["layout"]["images"]) == len(ponder["blocks"])
    # the numbers the page's units map and its stats read (it computes none)
    assert (ponder["units_min"], ponder["units_max"]) == (min(flat(ponder["units_total"])), max(flat(ponder["units_total"])))
    assert ponder["mean"] == pytest.approx(sum(b["mean_ponder"] for b in ponder["blocks"]), abs=1e-4)
    assert ponder["mean_units"] == pytest.approx(sum(b["mean_units"] for b in ponder["blocks"]), abs=1e-4)

    aig = client.post("/api/models/fmnist_aig_resnet32/image", json={"image": digest}).json()
    assert set(aig["figures"]) == {"map", "gates"}
    assert aig["figures"]["map"]["data"] == [] and aig["figures"]["map"]["layout"]["images"][0]["source"] == aig["input"]["image"]
    bars = {t["name"]: t for t in aig["figures"]["gates"]["data"]}
    gates = aig["gates"]
    assert bars["executed"]["x"] == [l for l, e in zip(gates["layers"], gates["executed"]) if e]
    assert bars["executed"]["y"] == [p for p, e in zip(gates["probability"], gates["executed"]) if e]
    dense = client.post("/api/models/fmnist_resnet32/image", json={"image": digest}).json()
    assert set(dense["figures"]) == {"map"} and dense["figures"]["map"]["data"] == []


def test_text_and_parity_answers_carry_their_figures(client):
    text = "Hello, world. Ünïcode 123\n"
    result = client.post("/api/models/jargon_act_lstm/text", json={"text": text}).json()
    chars, key = result["chars"], result["measure"]
    other = "ponder" if key == "steps" else "steps"
    bars, line, bits = result["figures"]["text"]["data"]
    assert bars["type"] == "bar" and bars["x"] == list(range(len(chars))) and bars["y"] == [c[key] for c in chars]
    assert bars["customdata"] == [{" ": "␣", "\n": "↵"}.get(c["char"], c["char"]) for c in chars]
    assert len(bars["marker"]["color"]) == len(chars)
    assert line["y"] == [c[other] for c in chars]
    assert bits["yaxis"] == "y2" and bits["y"] == [c["bits"] for c in chars] and bits["y"][0] is None

    vector = [1, -1, 0, 1] + [0] * 12
    parity = client.post("/api/models/parity16_act_rnn/parity", json={"vector": vector}).json()
    traces = {t["name"]: t for t in parity["figures"]["parity"]["data"]}
    assert traces["current"]["x"] == [parity["nonzero"]] and traces["current"]["y"] == [parity["ponder"]]
    assert traces["your vectors"]["text"] == [f"+-0+{'0' * 12}: {parity['answer']}, N={parity['steps']}"]
    curve = models.read_card(CHECKPOINTS / "parity16_act_rnn")["metrics"]["test"].get("ponder_by_nonzero")
    if curve:
        assert traces["test-set mean ponder"]["y"] == [curve[k] for k in sorted(curve, key=int)]


def wait_for_dataset(client, model_id: str, timeout: float = 300) -> dict:
    import time

    deadline = time.time() + timeout
    while (status := client.get(f"/api/models/{model_id}/dataset").json())["status"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    assert status["status"] == "done", status
    return status["result"]


@pytest.mark.usefixtures("fashion_mnist")  # (conftest: a skip here, a failure in CI)
def test_dataset_results_carry_their_figures(tmp_path):
    """Computed (a tiny SACT model over the Fashion-MNIST test set) and served again from the
    cache: the figures come with the numbers both times; the corpus panel's too."""
    from tests.browser_support import make_tiny_checkpoints

    ids = make_tiny_checkpoints(tmp_path / "ckpts")
    folders = [tmp_path / "ckpts" / ids["sact"], CHECKPOINTS / "jargon_act_lstm"]
    for attempt in ("computed", "cached"):
        app = create_app(folders, device="cpu", cache_dir=tmp_path / "cache")
        with TestClient(app) as c:
            result = wait_for_dataset(c, ids["sact"])
            figures = result["figures"]
            assert set(figures) == {"class", "ponder", "flops_histogram", "ponder_histogram"}, attempt
            assert figures["class"]["data"][0]["y"] == [k["flops_ratio"] for k in result["per_class"]]
            assert figures["ponder"]["data"][0]["y"] == [k["mean_ponder"] for k in result["per_class"]]
            assert figures["ponder_histogram"]["data"][0]["y"] == result["ponder_histogram"]["counts"]
            assert sum(figures["flops_histogram"]["data"][0]["y"]) == result["examples"] == 10000
            assert result["mean_ponder"] == pytest.approx(sum(k["mean_ponder"] * k["count"] for k in result["per_class"]) / 10000, rel=1e-5)
            corpus = wait_for_dataset(c, "jargon_act_lstm")
            steps = corpus["figures"]["corpus"]["data"][0]
            assert steps["y"] == [k["steps"] for k in corpus["per_char_class"].values()]
        cached = list((tmp_path / "cache").glob(f"dataset-{ids['sact']}-*.json"))
        assert len(cached) == 1 and json.loads(cached[0].read_text()).get("figures") is None  # drawn from the numbers when served


# ------------------------------------------------------------------ `ponderscope analyze` results
def _shapes_folder(root: Path) -> Path:
    """An image folder with train/ and val/, two classes of small PNGs that differ in content."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 5)):
        for label, base in (("dark", 30), ("light", 170)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 60, (10, 12)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "L").save(root / split / label / f"{i}.png")
    return root


def _tiny_checkpoint(path: Path, data: Path, seed: int, shift: float = 0.0) -> dict:
    """An untrained 2-class SACT model; `shift` lowers the "light" logit (with seed 0, -0.075
    puts its threshold among the val images: some right, some wrong, both classes predicted)."""
    from ponderscope.models import create_model, save_checkpoint

    torch.manual_seed(seed)
    model = create_model("sact_resnet", depth=8, widths=(4, 8, 16), in_channels=1, num_classes=2)
    with torch.no_grad():  # running statistics away from the defaults, so the logits vary between images
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
        model.classifier.bias[1] += shift
    card = {"task": {"name": "classify"}, "dataset": f"imagefolder:{data}", "classes": ["dark", "light"],
            "preprocess": {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.25]}, "config": {"data_options": {"channels": 1}}}
    save_checkpoint(model.eval(), path, card)
    return card


def test_analyses_of_an_image_folder_are_attached_to_the_model_with_their_weights(tmp_path):
    """`ponderscope analyze` over an image folder -> listed with the model whose weights it
    analysed (given with analyses=, or kept in the checkpoint's own folder), served by
    GET /dataset?source=NAME with the numbers a plain loop over the files gives; an analysis of
    other weights is a load error, attached to no model."""
    import csv
    import shutil

    from ponderscope.analyze import analyze

    folder = _shapes_folder(tmp_path / "shapes")
    ckpt = tmp_path / "ckpts" / "tiny"
    card = _tiny_checkpoint(ckpt, folder, seed=0, shift=-0.075)
    out = tmp_path / "runs" / "shapes-val"
    analyze(str(ckpt), str(out), data=f"imagefolder:{folder}", device="cpu", workers=0, progress=False)
    written = json.loads((out / "analysis.json").read_text())
    assert written["examples"] == 10 and written["source"]["images"] == 10

    # an independent computation: the model over each val file, as the server prepares an upload
    model = models.load_checkpoint(ckpt, device="cpu")
    classes = sorted(p.name for p in (folder / "val").iterdir())
    predicted, right = {}, 0
    for label, name in enumerate(classes):
        for file in sorted((folder / "val" / name).iterdir()):
            with Image.open(file) as image:
                x, _ = prepare(image, card["preprocess"])
            with torch.no_grad():
                pred = int(model.trace(x).logits.argmax(-1)[0])
            predicted[file.resolve()] = pred
            right += pred == label
    assert len(predicted) == 10 and set(predicted.values()) == {0, 1} and 0 < right < 10  # a check that can fail
    rows = list(csv.DictReader((out / "images.csv").open()))
    assert {Path(r["path"]).resolve(): classes.index(r["prediction"]) for r in rows} == predicted

    other = tmp_path / "other" / "tiny-other"
    _tiny_checkpoint(other, folder, seed=1)
    foreign = tmp_path / "runs" / "other-val"
    analyze(str(other), str(foreign), data=f"imagefolder:{folder}", device="cpu", workers=0, progress=False)

    app = create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache", analyses=[out, foreign])
    with TestClient(app) as client:
        listed = client.get("/api/models").json()
        assert [m["id"] for m in listed] == ["tiny"]
        assert listed[0]["analyses"] == [{"name": "shapes-val", "folder": str(out.resolve()), "data": written["source"]["data"],
                                          "examples": 10, "accuracy": written["accuracy"]}]
        assert client.get("/api/models/tiny").json()["analyses"] == listed[0]["analyses"]
        answer = client.get("/api/models/tiny/dataset", params={"source": "shapes-val"})
        assert answer.status_code == 200
        status = answer.json()
        assert status["status"] == "done" and status["progress"] == 1
        assert status["message"].startswith(f"ponderscope analyze: {written['source']['data']}, 1 process(es) on ")
        result = status["result"]
        assert result["examples"] == written["examples"] == 10
        assert result["accuracy"] == written["accuracy"] == pytest.approx(right / 10)
        assert result["source"] == written["source"] and result["per_class"] == written["per_class"]
        assert [c["count"] for c in result["per_class"]] == [5, 5]
        assert set(result["figures"]) >= {"class", "flops_histogram"}
        missing = client.get("/api/models/tiny/dataset", params={"source": "no-such-analysis"})
        assert missing.status_code == 404 and "no analysis 'no-such-analysis'" in missing.json()["detail"]
        assert "shapes-val" in missing.json()["detail"]  # the known ones are named
        # the analysis of other weights: said, and attached to nothing
        errors = client.get("/api/health").json()["load_errors"]
        assert any(str(foreign.resolve()) in e and "whose weights no loaded model has" in e for e in errors), errors
        assert client.get("/api/models/tiny/dataset", params={"source": "other-val"}).status_code == 404

    # kept inside the checkpoint's own folder: found without analyses=
    shutil.copytree(out, ckpt / "kept-here")
    with TestClient(create_app([tmp_path / "ckpts"], device="cpu", cache_dir=tmp_path / "cache2")) as client:
        found = client.get("/api/models").json()[0]["analyses"]
        assert [(a["name"], a["folder"], a["examples"]) for a in found] == [("kept-here", str((ckpt / "kept-here").resolve()), 10)]
        again = client.get("/api/models/tiny/dataset", params={"source": "kept-here"}).json()
        assert again["status"] == "done" and again["result"]["accuracy"] == written["accuracy"]
        assert client.get("/api/health").json()["load_errors"] == []


def test_models_list_their_execution_plan_and_answers_say_which_ran(client):
    """serve plans each model's execution at start-up (auto, the default): the model list shows the
    plan and the timings behind it; an answer's `execution` is the plan's entry for its batch (1)."""
    from ponderscope.core.execution import ANALYSIS_BATCH

    listed = {m["id"]: m for m in client.get("/api/models").json()}
    for model_id in (SACT, "fmnist_aig_resnet32", "fmnist_act_resnet32", "jargon_act_lstm", "parity16_act_rnn"):
        plan = listed[model_id]["execution"]
        assert plan["mode"] == "auto" and plan["source"] in ("measured", "cached") and plan["device"], model_id
        assert set(plan["plan"]) == {"1", str(ANALYSIS_BATCH)} and set(plan["plan"].values()) <= {"sparse", "masked"}
        for batch, times in plan["timings_ms"].items():  # the faster median was chosen
            assert times["sparse"] > 0 and times["masked"] > 0
            assert plan["plan"][batch] == min(("sparse", "masked"), key=lambda e: (times[e], e != "sparse"))
    for model_id in ("fmnist_resnet32", "jargon_lstm", "parity16_rnn"):  # one code path: nothing timed
        plan = listed[model_id]["execution"]
        assert plan["plan"] == {} and plan["timings_ms"] == {} and plan["source"] == "one path" and plan["default"] == "sparse"
    digest = upload(client, png(shirt_like())).json()["hash"]
    image = client.post(f"/api/models/{SACT}/image", json={"image": digest}).json()
    assert image["execution"] == listed[SACT]["execution"]["plan"]["1"]
    text = client.post("/api/models/jargon_act_lstm/text", json={"text": "plan"}).json()
    assert text["execution"] == listed["jargon_act_lstm"]["execution"]["plan"]["1"]
    dense = client.post("/api/models/fmnist_resnet32/image", json={"image": digest}).json()
    assert dense["execution"] == "sparse"
