"""Videos of any length, on every path (offline, client, plain HTTP), both models.

1- and 10-minute 640x480 clips (made at test time) exceed max_model_len with the reference's
sampling (60 and 64 frames). They must get a vector or score, with the frames used reported,
and that result must equal an independent reading of the documented rule: the reference
implementation given the kept frames (``reference_frames`` below keeps
``round(linspace(0, n - 1, K))`` of the frames the reference sampled, with numpy; it shares no
code with the package). The API servers' memory growth is measured (< 1 GiB each). With
``refuse`` the answer is a 400 naming the frame count that fits. A video that fits is untouched
(the parity matrix's mp4 cases; here a short one through the same servers). Figures go to
.cache/reports/long-videos.json (README "Long videos"); no timing is asserted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from test_hardening import PeakRSS, record

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".cache" / "reports" / "long-videos.json"
HEADER = "x-qwen3vl-video-frames"  # the documented response header (README "Long videos")
GIB = 2**30
COS = 0.999999
SCORE_TOL = 1e-5


def _record(key: str, value) -> None:
    record(key, value, report=REPORT, tag="LONG-VIDEOS")


@contextlib.contextmanager
def reference_frames(cap: int | None):
    """The reference, giving every video file at most ``cap`` of the frames it sampled, evenly
    spread with the first and last kept (the README's rule, read again here with numpy)."""
    from qwen_vl_utils import vision_process as vp

    read = vp.VIDEO_READER_BACKENDS["pyav"]

    def capped(ele):
        video, meta, sample_fps = read(ele)
        n = video.shape[0]
        if cap is None or n <= cap:
            return video, meta, sample_fps
        keep = np.round(np.linspace(0, n - 1, cap)).astype(int)
        idx = np.asarray(meta["frames_indices"])[keep]
        return video[keep], {**meta, "frames_indices": idx.tolist()}, sample_fps * cap / n

    vp.VIDEO_READER_BACKENDS["pyav"] = capped
    try:
        yield
    finally:
        vp.VIDEO_READER_BACKENDS["pyav"] = read


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def _frames(header: str | None) -> list[tuple[int, int]]:
    out = []
    for part in (header or "").split(","):
        if "/" in part:
            used, prepared = part.strip().split("/")
            out.append((int(used), int(prepared)))
    return out


@pytest.fixture(scope="module")
def offline_long(embedding_ckpt, reranker_ckpt, long_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("long-offline") / "report.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("long_video_worker.py")),
                           str(embedding_ckpt), str(reranker_ckpt), str(out),
                           str(long_videos[1]), str(long_videos[10])],
                          capture_output=True, text=True, timeout=1200)
    assert out.exists(), f"worker wrote nothing (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def expected_embeddings(reference_embedder, long_videos):
    """Reference vectors of each clip with 52 kept frames (what the rule gives at 8,192 tokens:
    asserted separately from the reported counts), computed independently."""
    out = {}
    for minutes, path in long_videos.items():
        with reference_frames(52):
            out[minutes] = reference_embedder.process([{"video": str(path)}])[0]
    return out


def test_offline_embedding_fits_and_matches_the_reference(offline_long, expected_embeddings):
    emb = offline_long["embed"]
    meta = emb["meta"]
    assert meta[0]["video_frames"] == [[52, 60]] and meta[2]["video_frames"] == [[52, 64]]
    assert meta[0]["prompt_tokens"] <= 8192 and meta[2]["prompt_tokens"] <= 8192
    assert meta[1]["video_frames"] == [] and meta[3]["video_frames"] == [[8, 8]]  # fits: untouched
    assert emb["warnings"] == [
        f"inputs[0]: video frames reduced to fit max_model_len (52 of 60 frames; prompt {meta[0]['prompt_tokens']} tokens)",
        f"inputs[2]: video frames reduced to fit max_model_len (52 of 64 frames; prompt {meta[2]['prompt_tokens']} tokens)"]
    assert _cos(emb["vectors"][0], expected_embeddings[1]) >= COS
    assert _cos(emb["vectors"][2], expected_embeddings[10]) >= COS
    _record("offline_embedding", {"frames": [m["video_frames"] for m in meta],
                                  "prompt_tokens": [m["prompt_tokens"] for m in meta],
                                  "seconds_4_items": emb["seconds"],
                                  "cosine_to_reference": [round(_cos(emb["vectors"][0], expected_embeddings[1]), 7),
                                                          round(_cos(emb["vectors"][2], expected_embeddings[10]), 7)]})


def test_offline_refuse_names_the_item_and_the_count_that_fits(offline_long):
    msg = offline_long["embed_refused"]
    assert msg.startswith("InputError: inputs[1]: the video's 60 frames make the prompt"), msg
    assert "above max_model_len=8192; 52 frames would fit" in msg and "max_frames=52" in msg
    msg = offline_long["rerank_refused"]
    assert msg.startswith("InputError: documents[0]: video 1 of 2 (60 frames), video 2 of 2 (64 frames)"), msg
    assert "32 frames per video would fit" in msg


def _served_embedding(server, path: Path, **headers):
    body = {"model": server.model, "add_generation_prompt": True, "encoding_format": "float",
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": _url(path)}}]}]}
    return httpx.post(server.base_url + "/embeddings", json=body, timeout=900, headers=headers)


@pytest.mark.parametrize("minutes, prepared", [(1, 60), (10, 64)])
def test_server_embedding_every_path(minutes, prepared, embedding_server, long_videos,
                                     expected_embeddings):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient
    from qwen3vl_vllm.prompts.video_fit import VideoFitWarning

    path = long_videos[minutes]
    with PeakRSS(embedding_server.proc.pid) as rss:
        t0 = time.monotonic()
        r = _served_embedding(embedding_server, path)
        seconds = time.monotonic() - t0
    assert r.status_code == 200, r.text[:500]
    assert _frames(r.headers.get(HEADER)) == [(52, prepared)]
    assert r.json()["usage"]["prompt_tokens"] <= 8192
    plain = r.json()["data"][0]["embedding"]
    client = EmbeddingClient(base_url=embedding_server.base_url, model=embedding_server.model, timeout=900)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        via_client = client.embed([{"text": "a red square"}, {"video": str(path)}])
    fit = [str(w.message) for w in caught if issubclass(w.category, VideoFitWarning)]
    assert fit == [f"inputs[1]: the server reduced video frames to fit max_model_len (52 of {prepared} frames)"]
    for vec in (plain, via_client[1]):
        assert _cos(vec, expected_embeddings[minutes]) >= COS
    assert rss.growth < GIB, f"API server grew by {rss.growth / 2**20:.0f} MiB"
    _record(f"server_embedding_{minutes}min", {
        "file_mib": round(path.stat().st_size / 2**20, 2), "source_frames": 1800 * minutes,
        "frames": f"52/{prepared}", "prompt_tokens": r.json()["usage"]["prompt_tokens"],
        "rss_growth_mib": round(rss.growth / 2**20), "seconds_plain_http": round(seconds, 1),
        "cosine_to_reference": round(_cos(plain, expected_embeddings[minutes]), 7)})


def test_server_refuse_per_request_and_bad_header(embedding_server, long_videos):
    r = _served_embedding(embedding_server, long_videos[1], **{"X-Qwen3VL-Video-Fit": "refuse"})
    assert r.status_code == 400, r.text[:300]
    msg = r.json()["error"]["message"]
    assert "60 frames make the prompt" in msg and "52 frames would fit" in msg, msg
    assert "data:video/mp4;max_frames=52;base64" in msg
    bad = _served_embedding(embedding_server, long_videos[1], **{"X-Qwen3VL-Video-Fit": "truncate"})
    assert bad.status_code == 400 and "'truncate' is not one of fit, refuse" in bad.json()["error"]["message"]
    ok = httpx.post(embedding_server.base_url + "/embeddings", timeout=60,
                    json={"model": embedding_server.model, "input": "still serving"})
    assert ok.status_code == 200 and HEADER not in ok.headers
    _record("server_refuse", {"status": r.status_code, "message": msg})


def test_video_that_fits_is_untouched(embedding_server, reference_embedder, long_videos):
    """max_frames=8 on the 1-minute clip: 8 frames, well within the limit: the reference's vector."""
    path = long_videos[1]
    url = "data:video/mp4;max_frames=8;base64," + base64.b64encode(path.read_bytes()).decode()
    body = {"model": embedding_server.model, "add_generation_prompt": True, "encoding_format": "float",
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}]}
    r = httpx.post(embedding_server.base_url + "/embeddings", json=body, timeout=300)
    assert r.status_code == 200 and _frames(r.headers.get(HEADER)) == [(8, 8)]
    with reference_frames(None):
        ref = reference_embedder.process([{"video": str(path), "max_frames": 8}])[0]
    assert _cos(r.json()["data"][0]["embedding"], ref) >= COS


@pytest.fixture(scope="module")
def expected_scores(reference_reranker, long_videos):
    """Reference scores: a 1-minute query video with the 10-minute document (both capped at 32
    frames: 2 x 16 groups fit 10,245 tokens), and with a text document (untouched)."""
    query = {"video": str(long_videos[1])}
    with reference_frames(32):
        fitted = reference_reranker.process({"query": query, "documents": [{"video": str(long_videos[10])}]})[0]
    with reference_frames(None):
        text = reference_reranker.process({"query": query, "documents": [{"text": "a red square moving"}]})[0]
    return [fitted, text]


def test_rerank_every_path(offline_long, reranker_server, long_videos, expected_scores):
    from plain_http import plain_side
    from qwen3vl_vllm.clients.rerank import RerankClient
    from qwen3vl_vllm.prompts.video_fit import VideoFitWarning

    rr = offline_long["rerank"]
    assert [m["video_frames"] for m in rr["meta"]] == [[[32, 60], [32, 64]], [[60, 60]]]
    assert rr["warnings"] == [f"documents[0]: video frames reduced to fit max_model_len (32 of 60, 32 of 64 "
                              f"frames; prompt {rr['meta'][0]['prompt_tokens']} tokens)"]
    query = {"video": str(long_videos[1])}
    docs = [{"video": str(long_videos[10])}, {"text": "a red square moving"}]
    client = RerankClient(base_url=reranker_server.base_url, model=reranker_server.model, timeout=900)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        via_client = client.score(query, docs)
    fit = [str(w.message) for w in caught if issubclass(w.category, VideoFitWarning)]
    assert len(fit) == 1 and fit[0].startswith("documents[0:2]: the server reduced video frames"), fit
    assert "32 of 60" in fit[0] and "32 of 64" in fit[0]
    body = {"model": reranker_server.model, "query": plain_side(query), "documents": [plain_side(d) for d in docs]}
    with PeakRSS(reranker_server.proc.pid) as rss:
        r = httpx.post(reranker_server.base_url + "/rerank", json=body, timeout=900)
    assert r.status_code == 200, r.text[:500]
    assert sorted(_frames(r.headers.get(HEADER))) == sorted([(32, 60), (32, 64), (60, 60)])
    plain = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    paths = {"offline": rr["scores"], "client": via_client, "plain /rerank": [plain[0], plain[1]]}
    for name, scores in paths.items():
        assert np.allclose(scores, expected_scores, atol=SCORE_TOL, rtol=0), (name, scores, expected_scores)
    assert rss.growth < GIB, f"reranker API server grew by {rss.growth / 2**20:.0f} MiB"
    _record("rerank", {"frames": [m["video_frames"] for m in rr["meta"]],
                       "prompt_tokens": [m["prompt_tokens"] for m in rr["meta"]],
                       "rss_growth_mib": round(rss.growth / 2**20),
                       "max_abs_diff": {k: float(np.max(np.abs(np.subtract(v, expected_scores)))) for k, v in paths.items()}})
