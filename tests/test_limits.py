"""What a hostile client can make the server spend: image memory, the image store, bodies without a
Content-Length, turns at the model while dataset jobs run, and which folders it reads."""
from __future__ import annotations

import hashlib
import io
import os
import select
import socket
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench import memory
from conftest import uvicorn_in_thread
from ponderscope.server.app import create_app
from ponderscope.server.image_store import ImageStore
from ponderscope.core import imaging
from ponderscope.core.imaging import MAX_DECODED_PIXELS, ImageError, encode_png
from ponderscope.core.loaded import InferenceSlots
from ponderscope.server.limits import OTHER_BODY_BYTES, UPLOAD_BODY_BYTES

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SACT = "fmnist_sact_resnet32"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- what one image may cost -------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    return memory.make_cases(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name, status", [
    ("rgba_4000.webp", 200),  # the costliest accepted in bench/memory.py: no reduced decoding for WebP
    ("16bit_4000.png", 200),
    ("rgb_7071.jpg", 200),  # 50 MP JPEG: decoded at half size by the DCT
    ("16bit_7071.png", 413),  # the 100 KB file of 50 MP: refused from its header
    ("lossless_7071.webp", 413),
])
def test_any_accepted_upload_costs_under_300_mb(hostile_files, name, status):
    """Measured in a fresh process (VmHWM above the process's own after imports): decode, PNG for
    the store, prepare at train and native resolution for an ImageNet-style card."""
    row = memory.measure(hostile_files[name])
    assert row["status"] == status, row
    assert row["peak_mb"] < memory.LIMIT_MB, row
    if status == 413:
        assert "megapixels" in row["detail"] and row["peak_mb"] < 20, row  # refused before decoding
    if name == "rgb_7071.jpg":
        assert row["detail"].startswith("3536x3536"), row


def test_health_answers_while_big_images_are_decoded(tmp_path, hostile_files, monkeypatch):
    """An ordering, not a time limit (a busy machine makes every request slow): some /api/health
    request is asked after an upload's decoding began and answered before that decoding ended.
    Decoding on the event loop, or holding the GIL throughout, would hold every answer until it ends."""
    from ponderscope.server.routers import images as images_router

    decoding, lock = [], threading.Lock()  # (began, ended) of each upload's decode + PNG encode
    real = images_router.store_upload

    def timed(*args, **kwargs):
        began = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                decoding.append((began, time.monotonic()))

    monkeypatch.setattr(images_router, "store_upload", timed)
    app = create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path)
    data = hostile_files["rgba_4000.webp"].read_bytes()
    with TestClient(app) as client:
        answers, health = [], []
        uploads = [threading.Thread(target=lambda: answers.append(client.post("/api/images", files={"file": ("x.webp", data)}).status_code))
                   for _ in range(4)]
        for thread in uploads:
            thread.start()
        while any(thread.is_alive() for thread in uploads):
            asked = time.monotonic()
            assert client.get("/api/health").status_code == 200
            health.append((asked, time.monotonic()))
            time.sleep(0.02)
        for thread in uploads:
            thread.join()
    assert answers == [200] * 4 and len(decoding) == 4
    during = [(a, b) for a, b in health if any(began < a and b < ended for began, ended in decoding)]
    assert during, f"no /api/health answer came while an image was decoded: {len(health)} asked, decoding {decoding}, health {health[:20]}"


def test_jpeg_over_the_pixel_budget_is_reduced_not_refused(tmp_path):
    from ponderscope.core.imaging import decode

    side = int((MAX_DECODED_PIXELS * 1.5) ** 0.5)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 60)).save(buffer, "JPEG")
    image = decode(buffer.getvalue())
    assert image.size == ((side + 1) // 2, (side + 1) // 2) and image.width * image.height <= MAX_DECODED_PIXELS
    assert max(abs(a - b) for a, b in zip(image.getpixel((10, 10)), (200, 30, 60))) <= 3

    big_png = io.BytesIO()
    Image.new("L", (side, side)).save(big_png, "PNG")
    with pytest.raises(ImageError) as refused:
        decode(big_png.getvalue())
    assert refused.value.status == 413 and f"{MAX_DECODED_PIXELS / 1e6:.0f} megapixels" in str(refused.value)


def test_alpha_and_16_bit_conversions_keep_their_values():
    """The strip-wise composite and the integer 16-bit scaling give what the whole-image
    operations give (Pillow's alpha_composite over black; floor(v * 255 / 65535))."""
    from ponderscope.core.imaging import decode

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (700, 90, 4), dtype=np.uint8))  # 700 rows: three strips
    expected = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    got = np.asarray(decode(png(rgba)), dtype=int)
    assert np.abs(got - np.asarray(expected, dtype=int)).max() <= 1

    values = rng.integers(0, 65536, (50, 60), dtype=np.uint16)
    values[0, :3] = [0, 257 * 7, 65535]  # exact multiples of 257 land on exact levels
    got = np.asarray(decode(png(Image.fromarray(values))))
    assert np.array_equal(got, (values.astype(np.int64) * 255 // 65535).astype(np.uint8))
    assert list(got[0, :3]) == [0, 7, 255]


# --- the image store -----------------------------------------------------------------------------

def test_store_is_bounded_in_bytes_and_forgets_the_least_recently_used(tmp_path):
    blobs = [os.urandom(1000) for _ in range(6)]
    store = ImageStore(tmp_path, max_disk_bytes=3500, max_memory_bytes=2500)
    digests = [store.put(blob) for blob in blobs[:3]]
    assert store.get(digests[0]) == blobs[0]  # used again: now the most recent
    digests.append(store.put(blobs[3]))  # over 3500 bytes: digests[1], the least recently used, goes
    assert store.get(digests[1]) is None and not (tmp_path / digests[1]).exists()
    assert [store.get(d) for d in (digests[0], digests[2], digests[3])] == [blobs[0], blobs[2], blobs[3]]
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk == store.disk_bytes == 3000 and store.memory_bytes <= 2500

    reopened = ImageStore(tmp_path, max_disk_bytes=2000)  # a restart with a smaller budget keeps the newest
    assert reopened.disk_bytes == 2000 and reopened.get(digests[3]) == blobs[3]

    (tmp_path / digests[3]).write_bytes(b"x" * 1000)  # damaged on disk: dropped, not served
    fresh = ImageStore(tmp_path)
    assert fresh.get(digests[3]) is None and not (tmp_path / digests[3]).exists()
    with pytest.raises(ImageError) as too_big:
        ImageStore(tmp_path / "small", max_disk_bytes=100).put(b"y" * 101)
    assert too_big.value.status == 413


@pytest.mark.parametrize("strip_bytes", [1 << 20, 100, 1000])  # one strip; a row per strip; several rows per strip
@pytest.mark.parametrize("mode, size", [("L", (1, 1)), ("L", (37, 5)), ("RGB", (5, 37)), ("RGB", (640, 480))])
def test_stored_png_is_the_decoded_pixels_exactly(mode, size, strip_bytes, monkeypatch):
    """encode_png (the store's own PNG writer: Up filter, zlib, a strip of rows at a time) read
    back by Pillow, and by zlib by hand: the same bytes, for values that wrap around in the filter
    (0 under 255 and back), across strip boundaries too."""
    monkeypatch.setattr(imaging, "PNG_STRIP_BYTES", strip_bytes)
    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[::2] = 255 - pixels[::2]  # large jumps between rows
    data = encode_png(Image.fromarray(pixels, mode))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-12:] == b"\0\0\0\0IEND\xaeB`\x82"
    # rows prefixed with filter 2 (Up), each byte the difference from the one above
    idat = data[33 + 8 : -12 - 4]  # after the signature and IHDR (8 + 25) and IDAT's length and type
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(shape[0], -1)
    assert (rows[:, 0] == 2).all()
    assert np.array_equal(np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8), pixels.reshape(shape[0], -1))


def test_store_keeps_pixels_not_padding_and_an_evicted_hash_says_upload_again(tmp_path):
    app = create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path, image_store_bytes=12_000)
    with TestClient(app) as client:
        image = png(noise(0))
        plain = client.post("/api/images", files={"file": ("a.png", image)}).json()["hash"]
        padded = client.post("/api/images", files={"file": ("a.png", image + b"\0" * 5_000_000)}).json()["hash"]
        assert padded == plain  # the same pixels: one stored image, whatever trailed the file
        stored = sorted(p.stat().st_size for p in (tmp_path / "images").iterdir())
        assert len(stored) == 1 and stored[0] < 5_000
        for seed in range(1, 6):  # each ~3.6 KB: the first goes
            client.post("/api/images", files={"file": ("b.png", png(noise(seed)))})
        assert sum(p.stat().st_size for p in (tmp_path / "images").iterdir()) <= 12_000
        gone = client.post(f"/api/models/{SACT}/image", json={"image": plain})
        assert gone.status_code == 404 and "upload it again" in gone.json()["detail"]
        assert client.get(f"/api/images/{plain}").status_code == 404


# --- bodies without a Content-Length -------------------------------------------------------------

@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """The app under uvicorn on a loopback port: the test client buffers bodies, a socket does not."""
    with uvicorn_in_thread(create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))) as port:
        yield port


MULTIPART_START = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


def send_chunked(port: int, path: str, content_type: str, total: int, chunk: int = 64 * 1024) -> tuple[int, bytes]:
    """POST `total` bytes in chunked encoding (a form's file that never ends, or JSON whitespace),
    stopping once the server answers -> (bytes sent, answer)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    if content_type.startswith("multipart/"):
        conn.sendall(b"%x\r\n" % len(MULTIPART_START) + MULTIPART_START + b"\r\n")
    sent, piece = 0, b"%x\r\n" % chunk + b" " * chunk + b"\r\n"
    try:
        while sent < total and not select.select([conn], [], [], 0)[0]:
            conn.sendall(piece)
            sent += chunk
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = conn.recv(65536)
            if not part:
                break
            answer += part
    except (ConnectionResetError, socket.timeout):
        pass
    conn.close()
    return sent, answer


@pytest.mark.parametrize("path, content_type, limit", [
    (f"/api/models/jargon_act_lstm/text", "application/json", OTHER_BODY_BYTES),
    ("/api/images", "multipart/form-data; boundary=xyz", UPLOAD_BODY_BYTES),
    (f"/api/models/{SACT}/image", "multipart/form-data; boundary=xyz", UPLOAD_BODY_BYTES),
])
def test_body_without_content_length_is_refused_past_its_limit(live_server, path, content_type, limit):
    sent, answer = send_chunked(live_server, path, content_type, total=5 * limit)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"the limit for this request is" in answer
    # the server stopped reading at the limit: what was sent past it sat in the sockets' buffers
    assert sent < limit + 16 * 1024 * 1024, sent


def test_declared_oversized_body_is_refused_before_it_is_read(live_server):
    conn = socket.create_connection(("127.0.0.1", live_server), timeout=10)
    conn.sendall(b"POST /api/models/jargon_act_lstm/parity HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n")
    answer = b""
    while b"MB" not in answer:  # the head and the body may come in separate packets
        try:
            part = conn.recv(65536)
        except socket.timeout:
            break
        if not part:
            break
        answer += part
    conn.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"2.0 MB" in answer


# --- turns at the model --------------------------------------------------------------------------

def test_interactive_requests_get_a_slot_while_background_jobs_wait():
    slots = InferenceSlots(2, background=1)
    job_running, release_job = threading.Event(), threading.Event()
    order = []

    def job(name):
        with slots.background():
            order.append(name)
            job_running.set()
            release_job.wait(10)
            order.append(f"{name} done")

    first = threading.Thread(target=job, args=("job 1",))
    first.start()
    job_running.wait(10)
    second = threading.Thread(target=job, args=("job 2",))  # may not take the second slot: it is kept
    second.start()
    time.sleep(0.2)
    with slots.interactive():  # does not wait for job 1: it gets its slot while job 1 still holds one
        order.append("request")
    assert order == ["job 1", "request"]
    release_job.set()
    first.join(10)
    second.join(10)
    assert order == ["job 1", "request", "job 1 done", "job 2", "job 2 done"]
    with pytest.raises(ValueError):
        InferenceSlots(2, background=2)


def test_image_request_while_every_dataset_job_runs(tmp_path):
    """All image models' dataset jobs started: an image request still answers, and the jobs
    finish (they take one slot in turn)."""
    app = create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path)
    with TestClient(app) as client:
        image_models = [m["id"] for m in client.get("/api/models").json() if m["kind"] == "image" and m["test_set"]]
        for model_id in image_models:
            assert client.get(f"/api/models/{model_id}/dataset").json()["status"] == "running"
        slots = app.state.store.inference
        assert slots.background_busy <= 1
        response = client.post(f"/api/models/{SACT}/image", json={"sample": 3})
        assert response.status_code == 200 and response.json()["input"]["sample"] == 3


# --- which folders it reads ----------------------------------------------------------------------

def test_checkpoint_folders_are_listed_by_their_real_path(tmp_path):
    (tmp_path / "linked").symlink_to(CHECKPOINTS / SACT)
    app = create_app([tmp_path], device="cpu", cache_dir=tmp_path / "cache")
    with TestClient(app) as client:
        listed = client.get("/api/models").json()
    assert [(m["id"], m["path"]) for m in listed] == [("linked", str((CHECKPOINTS / SACT).resolve()))]
    assert hashlib.sha256((CHECKPOINTS / SACT / "model.safetensors").read_bytes()).hexdigest() == app.state.store.models["linked"].weights_sha256


def test_an_elongated_image_cannot_grow_without_bound_when_resized():
    from ponderscope.core.imaging import prepare

    sliver = Image.new("RGB", (200_000, 2))
    card = {"channels": 3, "input_size": [224, 224], "resize": "shorter_then_center_crop", "resize_shorter": 256,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(ImageError) as refused:
        prepare(sliver, card)
    assert refused.value.status == 413 and "200000x2" in str(refused.value)
    x, shown = prepare(Image.new("RGB", (600, 300)), card)
    assert tuple(x.shape) == (1, 3, 224, 224) and shown.size == (224, 224)


def test_card_metrics_with_nan_are_served_as_null(tmp_path):
    import json
    import shutil

    folder = tmp_path / "ckpt" / "nan_card"
    shutil.copytree(CHECKPOINTS / SACT, folder)
    card = json.loads((folder / "card.json").read_text())
    card["metrics"]["test"]["accuracy"] = float("nan")
    (folder / "card.json").write_text(json.dumps(card))  # Python writes NaN
    app = create_app([tmp_path / "ckpt"], device="cpu", cache_dir=tmp_path / "cache")
    with TestClient(app) as client:
        listed = client.get("/api/models")
        assert listed.status_code == 200 and listed.json()[0]["metrics"]["test"]["accuracy"] is None
        page = client.get("/")
        assert page.status_code == 200 and "NaN" not in page.text


def test_an_image_folder_that_is_gone_is_a_404_with_the_reason(tmp_path):
    import json
    import shutil

    data = tmp_path / "data"
    folder = tmp_path / "ckpt" / "folder_model"
    shutil.copytree(CHECKPOINTS / SACT, folder)
    card = json.loads((folder / "card.json").read_text())
    card["dataset"] = f"imagefolder:{data / 'gone'}"
    (folder / "card.json").write_text(json.dumps(card))
    app = create_app([tmp_path / "ckpt"], device="cpu", cache_dir=tmp_path / "cache", data_roots=[data])
    with TestClient(app) as client:
        for path in ("/api/models/folder_model/samples", "/api/models/folder_model/samples/0.png"):
            response = client.get(path)
            assert response.status_code == 404 and "could not be read" in response.json()["detail"], (path, response.text)
        assert client.post("/api/models/folder_model/image", json={"sample": 0}).status_code == 404
        deadline = time.time() + 30  # the dataset view reads it in its background job, and reports why it stopped
        while (job := client.get("/api/models/folder_model/dataset").json())["status"] == "running" and time.time() < deadline:
            time.sleep(0.1)
        assert job["status"] == "error" and "could not be read" in job["message"]
