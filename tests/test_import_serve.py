"""Serving imported checkpoints: images prepared as the authors' test-time code prepares them,
the card's provenance in the API, a clear answer where an imported model has no test set."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ponderscope import models
from ponderscope.importers import import_checkpoint
from ponderscope.server.app import create_app
from ponderscope.core.imaging import normalize, prepare

FIXTURES = Path(__file__).parent / "fixtures" / "sact_tf"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.integers(0, 60, (height, width, 3))
    return Image.fromarray(np.clip(gradient * 0.7 + noise, 0, 255).astype(np.uint8), "RGB")


def test_per_image_standardization_is_tfs():
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(N)) on 0..255 values."""
    pixels = np.asarray(photo(7, 5), dtype=np.float64)  # H, W, C
    expected = (pixels - pixels.mean()) / max(pixels.std(), 1 / np.sqrt(pixels.size))
    tensor = torch.from_numpy(pixels.transpose(2, 0, 1) / 255.0).float()
    ours = normalize(tensor, {"normalize": "per_image_standardization"}).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    flat = torch.full((3, 4, 4), 0.5)  # a constant image: the floor 1/sqrt(N), not a division by 0
    assert torch.equal(normalize(flat, {"normalize": "per_image_standardization"}), torch.zeros(3, 4, 4))


def test_minus_one_to_one_and_inception_crop():
    preprocess = {"input_size": [224, 224], "channels": 3, "normalize": "minus_one_to_one", "resize": "center_crop_fraction", "crop_fraction": 0.875}
    image = photo(400, 300)
    x, shown = prepare(image, preprocess, "train")
    assert shown.size == (224, 224) and x.shape == (1, 3, 224, 224)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the values: test_preparation_equals_the_authors_tf_pipelines
    # native: the whole image (their ponder-map script), long side capped
    x, shown = prepare(image, preprocess, "native")
    assert shown.size == (400, 300)


def test_native_sizes_round_to_the_networks_multiple():
    preprocess = {"input_size": [32, 32], "channels": 3, "normalize": "per_image_standardization", "size_multiple": 4}
    x, shown = prepare(photo(50, 37), preprocess, "native")
    assert shown.size == (52, 36) and x.shape == (1, 3, 36, 52)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    import_checkpoint("sact-tf", FIXTURES / "cifar_sact" / "model.ckpt-0", root / "cifar_sact", "sact_resnet14", command="test")
    import_checkpoint("sact-tf", FIXTURES / "imagenet_sact" / "model.ckpt-0", root / "imagenet_sact", "sact_resnet20", command="test")
    app = create_app([root], device="cpu", cache_dir=root / "cache")
    return root, TestClient(app)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_to_an_imported_cifar_model_matches_an_independent_preparation(imported):
    root, client = imported
    image = photo(48, 40, seed=3)
    response = client.post("/api/models/cifar_sact/image", files={"file": ("photo.png", png_bytes(image), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    # independently: resize to 32x32, TF's per-image standardisation on 0..255, their network
    pixels = np.asarray(image.resize((32, 32), Image.BILINEAR), dtype=np.float64)
    standardized = (pixels - pixels.mean()) / max(pixels.std(), 1 / np.sqrt(pixels.size))
    model = models.load_checkpoint(root / "cifar_sact")
    with torch.no_grad():
        trace = model.trace(torch.from_numpy(standardized.transpose(2, 0, 1)[None]).float())
    probabilities = torch.softmax(trace.logits[0], -1)
    top = int(probabilities.argmax())
    assert body["prediction"][0]["index"] == top
    assert body["prediction"][0]["class"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"][top]
    assert body["prediction"][0]["probability"] == pytest.approx(float(probabilities[top]), abs=1e-5)
    # the total map: each block's N + R nearest-upsampled to 32x32 (a block's pixel = a square)
    total = np.array(body["ponder"]["total"])
    assert total.shape == (32, 32)
    upsampled = sum(np.kron(b.ponder_cost[0].numpy(), np.ones((32 // b.ponder_cost.shape[1],) * 2)) for b in trace.blocks)
    np.testing.assert_allclose(total, upsampled, atol=1e-3)
    assert total.max() > total.min()  # the fixture halts unevenly


def test_imported_model_card_and_missing_test_set(imported):
    _, client = imported
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert listed["cifar_sact"]["source"]["format"] == "sact-tf"
    assert listed["cifar_sact"]["test_set"] is False and listed["cifar_sact"]["family"] == "sact"
    assert listed["imagenet_sact"]["classes"][0] == "background" and len(listed["imagenet_sact"]["classes"]) == 1001
    for path in ("/api/models/cifar_sact/samples", "/api/models/cifar_sact/samples/0.png", "/api/models/cifar_sact/dataset"):
        response = client.get(path)
        assert response.status_code == 404 and "without a test set" in response.json()["detail"], path
    response = client.post("/api/models/cifar_sact/image", json={"sample": 0})
    assert response.status_code == 404 and "upload one" in response.json()["detail"]


def test_imagenet_upload_native_runs_the_whole_image(imported):
    _, client = imported
    image = photo(90, 70, seed=5)
    response = client.post("/api/models/imagenet_sact/image", files={"file": ("p.png", png_bytes(image), "image/png")},
                           data={"resolution": "native"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["input"]["width"], body["input"]["height"]) == (90, 70)
    # the whole image ran: the total on the finest block's grid (stride 4, 'SAME': ceil) spans all 90x70 pixels
    assert np.array(body["ponder"]["total"]).shape == (18, 23)
    grid = body["ponder"]["grid"]
    assert (grid["height"], grid["width"]) == (18, 23) and grid["dx"] * 23 == 90 and grid["dy"] * 18 == 70
    assert body["prediction"][0]["class"] in listed_names()


def listed_names():
    from ponderscope.importers.classes import imagenet_classes

    return set(imagenet_classes(1001))


def test_preparation_equals_the_authors_tf_pipelines():
    """tests/fixtures/sact_tf/preprocessing.npz: their inception_preprocessing.preprocess_for_eval
    and cifar per_image_standardization, run under TF (make_preprocessing.py)."""
    reference = np.load(FIXTURES / "preprocessing.npz")
    image = Image.fromarray(reference["photo"], "RGB")
    preprocess = {"input_size": [56, 56], "channels": 3, "normalize": "minus_one_to_one", "resize": "center_crop_fraction", "crop_fraction": 0.875}
    x, shown = prepare(image, preprocess, "train")
    np.testing.assert_allclose(x[0].numpy().transpose(1, 2, 0), reference["inception_eval"], atol=2e-6)
    assert shown.size == (56, 56)
    crop = Image.fromarray(reference["photo"][:32, :32], "RGB")
    x, _ = prepare(crop, {"input_size": [32, 32], "channels": 3, "normalize": "per_image_standardization"}, "train")
    np.testing.assert_allclose(x[0].numpy().transpose(1, 2, 0), reference["cifar_standardized"], atol=1e-5)


def test_torchvision_scale_and_center_crop_rounding():
    """Their train_img.py: Scale(256) keeps int(256 * long / short), CenterCrop rounds the offset."""
    preprocess = {"input_size": [224, 224], "channels": 3, "normalize": "mean_std", "mean": [0, 0, 0], "std": [1, 1, 1],
                  "resize": "shorter_then_center_crop", "resize_shorter": 256}
    image = photo(640, 427)
    x, shown = prepare(image, preprocess, "train")
    scaled = image.resize((int(256 * 640 / 427), 256), Image.BILINEAR)  # 383 wide, as int() truncates
    assert scaled.size == (383, 256)
    left, top = int(round((383 - 224) / 2.0)), int(round((256 - 224) / 2.0))
    expected = np.asarray(scaled.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    np.testing.assert_allclose(x[0].numpy().transpose(1, 2, 0), expected, atol=1e-6)


def test_eval_of_an_imported_model_says_why_not(imported):
    from ponderscope.cli import main

    root, _ = imported
    with pytest.raises(SystemExit) as error:
        main(["eval", str(root / "cifar_sact"), "--device", "cpu"])
    message = str(error.value)
    assert message.startswith("ponderscope eval: ") and "no test set of 'cifar-10'" in message and "\n" not in message
