"""`vllm serve` with the plugin (no pooling/template/pixel flags) vs the reference."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from cases import mixed_batch, noise_image, parity_cases

pytestmark = pytest.mark.slow
TOL = 0.999999  # fp32, tiny checkpoint: measured parity is <= 5e-7
@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server-media")


@pytest.fixture(scope="session")
def client(embedding_server):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    with EmbeddingClient(base_url=embedding_server.base_url, max_concurrency=4) as c:
        yield c


@pytest.mark.parametrize("case", list(parity_cases(Path("/tmp/qwen3vl-case-names"))))
def test_server_parity(case, client, reference_embedder, media_dir):
    item = parity_cases(media_dir)[case]
    ref = reference_embedder.process([item])[0]
    got = client.embed([item])[0]
    cos = float(np.dot(got, ref))
    print(f"PARITY server {case}: cosine {cos:.7f}")
    assert cos >= TOL, f"{case}: cosine {cos}"


def test_plain_http_video_file_matches(embedding_server, reference_embedder, media_dir):
    """An mp4 sent as-is (data URL) is decoded by the plugin's loader like the reference."""
    import openai

    path = parity_cases(media_dir)["video(mp4)"]["video"]
    url = "data:video/mp4;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    sdk = openai.OpenAI(base_url=embedding_server.base_url, api_key="EMPTY")
    resp = sdk.post("/embeddings", cast_to=object, body={
        "model": sdk.models.list().data[0].id, "add_generation_prompt": True,
        "messages": [{"role": "system", "content": "Represent the user's input."},
                     {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}]})
    got = np.asarray(resp["data"][0]["embedding"], dtype=np.float32)
    ref = reference_embedder.process([{"video": path}])[0]
    assert float(np.dot(got, ref)) >= TOL


def test_plain_openai_sdk_request_matches(embedding_server, reference_embedder):
    """No project code on the request side: the README's openai-SDK example."""
    import openai
    from PIL import Image
    from qwen_vl_utils import smart_resize

    img = noise_image(150, 100, 1)
    h, w = smart_resize(img.height, img.width, factor=32, min_pixels=4096, max_pixels=1843200)
    buf = io.BytesIO()
    img.resize((w, h), Image.Resampling.BICUBIC).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    sdk = openai.OpenAI(base_url=embedding_server.base_url, api_key="EMPTY")
    model = sdk.models.list().data[0].id
    resp = sdk.post("/embeddings", cast_to=object, body={
        "model": model,
        "messages": [
            {"role": "system", "content": "Represent the user's input."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "a noisy picture"},
            ]},
        ],
        "add_generation_prompt": True,
        "encoding_format": "float",
    })
    got = np.asarray(resp["data"][0]["embedding"], dtype=np.float32)
    ref = reference_embedder.process([{"text": "a noisy picture", "image": img}])[0]
    assert float(np.dot(got, ref)) >= TOL


def test_server_dimensions(client, reference_embedder):
    item = {"text": "Matryoshka check"}
    raw = reference_embedder.process([item], normalize=False)[0]
    expected = raw[:32] / np.linalg.norm(raw[:32])
    got = client.embed([item], dimensions=32)[0]
    assert got.shape == (32,)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("dims", [100_000, 65])
def test_server_dimensions_out_of_range(client, dims):
    from qwen3vl_vllm.errors import BadRequestError

    with pytest.raises(BadRequestError) as err:
        client.embed([{"text": "x"}], dimensions=dims)
    assert err.value.status == 400
    assert "dimensions" in str(err.value) and "[1, 64]" in str(err.value)


def test_server_mixed_batch_order(client, reference_embedder, media_dir):
    items = mixed_batch(media_dir)
    got = client.embed(items)
    ref = reference_embedder.process(items, batch_size=8)
    assert got.shape == ref.shape == (32, 64)
    assert (got * ref).sum(axis=1).min() >= TOL
    assert (np.argmax(got @ ref.T, axis=1) == np.arange(32)).all()


def test_client_bad_item_is_typed_and_named(client):
    from qwen3vl_vllm.errors import MediaError

    with pytest.raises(MediaError) as err:
        client.embed([{"text": "fine"}, {"image": b"corrupt bytes"}])
    assert str(err.value).startswith("inputs[1].image[0]")


def test_server_corrupt_image_is_400_and_server_survives(embedding_server, client):
    import httpx

    body = {"model": client.model, "add_generation_prompt": True, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]}]}
    r = httpx.post(embedding_server.base_url + "/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("messages[0].content[0]: cannot decode the image")
    ok = client.embed([{"text": "still serving"}])
    assert ok.shape == (1, 64) and abs(float(np.linalg.norm(ok)) - 1) < 1e-4


def test_async_client_matches_sync(embedding_server, client):
    import asyncio

    from qwen3vl_vllm.clients.embedding import AsyncEmbeddingClient

    items = [{"text": "async one"}, {"text": "async two", "image": noise_image(64, 64, 9)}]

    async def run():
        async with AsyncEmbeddingClient(base_url=embedding_server.base_url) as ac:
            return await ac.embed(items)

    got = asyncio.run(run())
    assert np.abs(got - client.embed(items)).max() < 1e-5
