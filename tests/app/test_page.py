"""The inspection page's server through Starlette's test client: every endpoint, the
maps it returns against the methods called directly, bad uploads and requests answered
with a message and a status, and concurrent requests."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import train
from app.page import session as page_session
from app.page.server import make_app
from visualize.methods import CAM_METHODS, ExplainSettings, compute
from visualize.targets import load_explained_model

RUN = "line-single"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """saved_models/ with one small line run."""
    folder = tmp_path_factory.mktemp("page") / "saved_models"
    argv = "--images-per-class 6 --epochs 1 --batch-size 32 --verbose 0 --no-report".split()
    assert train.main([*argv, "--out", str(folder / RUN)]) == 0
    return folder


@pytest.fixture(scope="module")
def client(root):
    with TestClient(make_app(root), raise_server_exceptions=False) as found:
        yield found


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _line_image() -> np.ndarray:
    image = np.zeros((28, 28, 3), np.uint8)
    image[10:13, 4:20] = (255, 0, 0)
    return image


def _wait(client, job: str) -> dict:
    for _ in range(600):
        found = client.get(f"/api/jobs/{job}").json()
        if found["state"] in ("done", "failed"):
            return found
        import time

        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish: {found}")


def test_the_page_and_the_run_list(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fruitcnn inspection" in page.text and "innerHTML" not in page.text.split("<script>")[1]
    runs = client.get("/api/runs").json()["runs"]
    assert [run["name"] for run in runs] == [RUN] and 0 <= runs[0]["test_accuracy"] <= 1


def test_a_run_describes_its_heads_layers_and_the_registrys_methods(client):
    found = client.get(f"/api/runs/{RUN}").json()
    assert list(found["heads"]) == ["class"] and len(found["heads"]["class"]) == 96
    assert found["image"] == {"height": 28, "width": 28, "channels": 3}
    assert {"conv1", "conv2", "relu3"} <= set(found["layers"]) and found["default_layer"] == "relu3"
    assert [method["name"] for method in found["methods"]][:9] == [
        "occlusion", "saliency", "gradcam", "gradcampp", "layercam", "integrated_gradients", "rise",
        "activations", "filters",
    ]  # fmt: skip
    assert found["defaults"]["patch"] == 3 and found["quality"] == []


def test_samples_filter_and_order_by_the_models_own_predictions(client):
    everything = client.get(f"/api/runs/{RUN}/samples", params={"limit": 200}).json()
    wrong = client.get(
        f"/api/runs/{RUN}/samples", params={"only": "wrong", "order": "confidence", "limit": 200}
    )
    wrong = wrong.json()
    right = client.get(f"/api/runs/{RUN}/samples", params={"only": "right", "limit": 1}).json()
    assert everything["of"] == everything["total"] == wrong["total"] + right["total"]
    assert all(not item["correct"] for item in wrong["items"])
    probabilities = [item["probability"] for item in wrong["items"]]
    assert probabilities == sorted(probabilities, reverse=True)  # the most confident mistakes first
    first = everything["items"][0]
    chosen = client.get(
        f"/api/runs/{RUN}/samples", params={"true": everything["items"][0]["index"] * 0, "limit": 200}
    ).json()
    assert all(item["true"] == chosen["items"][0]["true"] for item in chosen["items"])
    picture = client.get(f"/api/runs/{RUN}/samples/test/{first['index']}.png")
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (28, 28)


def test_predictions_of_an_upload_equal_the_models(client, root):
    upload = client.post(f"/api/runs/{RUN}/uploads", content=_png(_line_image()))
    assert upload.status_code == 201
    token = upload.json()["image"]
    found = client.post(f"/api/runs/{RUN}/predict", json={"image": {"upload": token}}).json()
    model, classes = load_explained_model(root / RUN)
    probabilities = model.predict(_line_image()[None].astype(np.float32), verbose=0)["class"][0]
    top = found["heads"]["class"]
    assert [row["index"] for row in top] == list(np.argsort(-probabilities)[:5])
    assert top[0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert top[0]["class"] == classes["class"][top[0]["index"]] and found["truth"] is None
    shown = client.get(f"/api/runs/{RUN}/uploads/{token}.png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(shown.content))), _line_image())
    sample = client.post(
        f"/api/runs/{RUN}/predict", json={"image": {"sample": {"split": "test", "index": 3}}}
    )
    assert set(sample.json()["truth"]) == {"class"}


@pytest.mark.parametrize(
    "method", ["occlusion", "saliency", "gradcam", "layercam", "integrated_gradients", "rise"]
)
def test_explanations_equal_the_method_called_directly(client, root, method):
    token = client.post(f"/api/runs/{RUN}/uploads", content=_png(_line_image())).json()["image"]
    request = {"image": {"upload": token}, "method": method, "head": "class", "target": 5, "smoothgrad": 0}
    spread = "centre" if method == "occlusion" else "window"  # the page's choice reaches the method
    request["spread"] = spread
    job = client.post(f"/api/runs/{RUN}/explain", json=request)
    assert job.status_code == 202
    found = _wait(client, job.json()["job"])
    assert found["state"] == "done", found
    model, _ = load_explained_model(root / RUN)
    layer = "relu3" if method in CAM_METHODS else None
    settings = ExplainSettings(
        layers=(layer,) if layer else (), patch=3, saliency_smoothgrad=0, occlusion_spread=spread
    )
    expected = compute(
        method, model, _line_image()[None], head="class", targets=np.array([5]), settings=settings
    )
    assert [item["name"] for item in found["maps"]] == list(expected.drawn)
    for item in found["maps"]:
        values = np.load(io.BytesIO(client.get(item["npy"]).content))
        np.testing.assert_allclose(values, expected.drawn[item["name"]][0], rtol=1e-4, atol=1e-6)
        picture = Image.open(io.BytesIO(client.get(item["png"]).content))
        assert picture.size == (28, 28) and np.asarray(picture).std() > 0
    if method == "occlusion":
        assert found["progress"] == [784, 784] and "incremental engine" in found["notes"][-1]


def test_activations_and_filters_of_a_chosen_layer(client, root):
    model, _ = load_explained_model(root / RUN)
    height, width, channels = (int(size) for size in model.get_layer("conv1").output.shape[1:])
    token = client.post(f"/api/runs/{RUN}/uploads", content=_png(_line_image())).json()["image"]
    for method, extra in (("activations", {"image": {"upload": token}}), ("filters", {"filters": 4})):
        job = client.post(f"/api/runs/{RUN}/explain", json={"method": method, "layer": "conv1", **extra})
        found = _wait(client, job.json()["job"])
        assert found["state"] == "done", found
        values = np.load(io.BytesIO(client.get(found["maps"][0]["npy"]).content))
        assert values.shape == ((channels, height, width) if method == "activations" else (4, 28, 28, 3))


def _bomb_png(side: int) -> bytes:
    """A PNG header claiming side x side pixels with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * side) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_bad_uploads_are_refused_with_a_message(client, monkeypatch):
    cases = {
        "not an image": (b"hello, this is text", 400, "not a readable image"),
        "empty": (b"", 400, "the upload is empty"),
        "a decompression bomb": (_bomb_png(20000), 400, "not a readable image"),
        "a zip file": (b"PK\x03\x04" + b"\x00" * 64, 400, "not a readable image"),
    }
    for name, (content, status, message) in cases.items():
        answer = client.post(f"/api/runs/{RUN}/uploads", content=content)
        assert answer.status_code == status and message in answer.json()["error"], name
        assert "Traceback" not in answer.text
    monkeypatch.setattr(page_session, "MAX_UPLOAD_BYTES", 1000)
    monkeypatch.setattr("app.page.server.MAX_UPLOAD_BYTES", 1000)
    too_large = client.post(f"/api/runs/{RUN}/uploads", content=b"\x00" * 5000)
    assert too_large.status_code == 413 and "at most 1,000 are accepted" in too_large.json()["error"]


def test_unknown_names_and_bad_requests_answer_with_a_status(client):
    token = client.post(f"/api/runs/{RUN}/uploads", content=_png(_line_image())).json()["image"]
    image = {"upload": token}
    explain = f"/api/runs/{RUN}/explain"
    cases = [
        (client.get("/api/runs/../../etc"), 404, None),
        (client.get("/api/runs/nowhere"), 404, "no finished run 'nowhere'"),
        (client.get(f"/api/runs/{RUN}/samples", params={"split": "holdout"}), 400, "unknown split 'holdout'"),
        (client.get(f"/api/runs/{RUN}/samples", params={"head": "angle"}), 400, "unknown head 'angle'"),
        (client.get(f"/api/runs/{RUN}/samples/test/99999.png"), 404, "the test split has images 0.."),
        (client.post(f"/api/runs/{RUN}/predict", json={"image": {"upload": "feed"}}), 404, "unknown image"),
        (client.post(f"/api/runs/{RUN}/predict", content=b"{not json"), 400, "must be JSON"),
        (client.post(explain, json={"image": image, "method": "lime"}), 400, "unknown method"),
        (
            client.post(explain, json={"image": image, "method": "gradcam", "layer": "conv9"}),
            400,
            "unknown layer 'conv9'; this model's layers with feature maps are normalize, conv1, bn1",
        ),
        (client.post(explain, json={"image": image, "method": "saliency", "target": 96}),
         400, "head class has classes 0..95, not 96"),
        (client.post(explain, json={"image": image, "method": "occlusion", "patch": 99}),
         400, "patch must be 1..28 pixels"),
        (client.post(explain, json={"image": image, "method": "occlusion", "fill": "red"}),
         400, "fill must be one of mean, gray, zero, blur"),
        (client.post(explain, json={"image": image, "method": "occlusion", "spread": "ring"}),
         400, "spread must be one of window, centre, got 'ring'"),
        (client.get("/api/jobs/0123"), 404, "unknown job"),
    ]  # fmt: skip
    for answer, status, message in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        if message:
            assert message in answer.json()["error"], answer.json()


def test_concurrent_requests_all_answer(client):
    token = client.post(f"/api/runs/{RUN}/uploads", content=_png(_line_image())).json()["image"]

    def ask(index: int):
        if index % 3 == 0:
            return client.post(f"/api/runs/{RUN}/predict", json={"image": {"upload": token}}).status_code
        if index % 3 == 1:
            job = client.post(
                f"/api/runs/{RUN}/explain",
                json={"image": {"upload": token}, "method": "gradcam", "target": index},
            )
            return 200 if _wait(client, job.json()["job"])["state"] == "done" else 500
        return client.get(f"/api/runs/{RUN}/samples", params={"only": "wrong"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert sorted(set(pool.map(ask, range(24)))) == [200]


def test_json_answers_are_json(client):
    answer = client.get("/api/runs")
    assert json.loads(answer.text)["runs"]


def test_a_streamed_split_is_predicted_chunk_by_chunk_as_a_held_one(root, tmp_path, monkeypatch):
    """The page's predictions over a split on disk (--stream's rows), read a chunk at
    a time, equal those over the same images in memory (oracle: the held split)."""
    import dataclasses

    from app.page.session import Runs
    from fruitcnn.data import load_dataset, rows

    held = Runs(root).open(RUN)
    held.split("test")
    streamed = Runs(root).open(RUN)
    dataset = load_dataset(streamed.config.data)
    writer = rows.RowWriter(tmp_path / "rows")
    writer.add("test", dataset.test.images)
    on_disk = dataclasses.replace(dataset.test, images=writer.rows("test", dataset.test.images.shape[1:]))
    streamed.dataset = dataclasses.replace(dataset, test=on_disk)
    monkeypatch.setattr(rows, "PASS_ROWS", 7)  # several chunks, the last one partial
    assert len(on_disk) % 7 and len(list(on_disk.images.chunks())) > 1
    streamed.split("test")
    for head, probabilities in held.predictions["test"].items():
        np.testing.assert_allclose(streamed.predictions["test"][head], probabilities, rtol=1e-5, atol=1e-6)
