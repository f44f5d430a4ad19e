"""The video fitting rule (``video_fit``) and its reporting, without an engine.

Expected values come from independent computations (numpy, brute force, vLLM's own Qwen3-VL
prompt expansion), never from the code under test.
"""

import asyncio
import json
import random
import warnings

import httpx
import numpy as np
import pytest

from qwen3vl_vllm.prompts import video_fit as F
from qwen3vl_vllm.serving import video_fit_hook as H

SEED = 20261128


def test_keep_indices_are_numpys_even_spread():
    rng = random.Random(SEED)
    for _ in range(500):
        n = rng.randint(1, 400)
        k = rng.randint(1, 450)
        got = F.keep_indices(n, k)
        if k >= n:
            assert got == list(range(n))
            continue
        want = np.round(np.linspace(0, n - 1, k)).astype(int).tolist() if k > 1 else [0]
        assert got == want, (n, k)
        assert len(set(got)) == k and got == sorted(got)  # distinct, in order


def test_fit_cap_is_the_largest_even_cap_that_fits_brute_force():
    rng = random.Random(SEED + 1)
    for _ in range(400):
        videos = []
        for _ in range(rng.randint(1, 3)):
            per = rng.randint(5, 400)
            videos.append((rng.randint(2, 80), (lambda per: lambda k: per * k // 2 + 3)(per)))
        base = rng.randint(0, 3000)
        limit = rng.randint(100, 12000)

        def fits(cap):
            return base + sum(cost(min(n, cap)) for n, cost in videos) <= limit

        top = max(n for n, _ in videos)
        best = max((c for c in range(2, top + 1, 2) if fits(c)), default=None)
        assert F.fit_cap(base=base, limit=limit, videos=videos) == best


def test_group_timestamps_match_qwen3vl_definition():
    rng = random.Random(SEED + 2)
    for _ in range(100):
        idx = sorted(rng.sample(range(5000), rng.randint(1, 40)))
        fps = rng.choice([1.0, 2.0, 23.976, 29.97, 30.0])
        padded = idx + [idx[-1]] * (len(idx) % 2)
        t = np.asarray(padded) / fps
        want = ((t[0::2] + t[1::2]) / 2).tolist()
        assert np.allclose(F.group_timestamps(idx, fps), want)


@pytest.fixture(scope="module")
def tokenizer(embedding_ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedding_ckpt))


def test_video_token_count_equals_vllms_expansion(tokenizer):
    """PreparedVideo.tokens(k) + the one pad it replaces == vLLM's own Qwen3-VL replacement."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor as P

    ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
    rng = random.Random(SEED + 3)
    for _ in range(40):
        n = rng.choice([2, 4, 10, 32, 60, 64])
        h, w = rng.choice([(64, 96), (480, 640), (224, 416), (32, 6400 // 100 * 32)])
        fps = rng.choice([1.0, 2.0, 29.97])
        total = rng.randint(n, 40000)
        indices = np.round(np.linspace(0, total - 1, n)).astype(int).tolist()
        video = F.PreparedVideo((np.zeros((n, h, w, 3), np.uint8), {"frames_indices": indices, "fps": fps}))
        for k in {2, n, max(2, n // 2 - n // 2 % 2)}:
            kept = [indices[i] for i in F.keep_indices(n, k)]
            stamps = [(a + b) / 2 for a, b in zip(np.asarray(kept[0::2]) / fps, np.asarray(kept[1::2]) / fps)]
            repl = P.get_video_repl(tokens_per_frame=[(h // 32) * (w // 32)] * len(stamps),
                                    timestamps=stamps, tokenizer=tokenizer, vision_start_token_id=ids[0],
                                    vision_end_token_id=ids[1], video_token_id=ids[2])
            ts_len = lambda t: len(tokenizer.encode(f"<{t:.1f} seconds>", add_special_tokens=False))  # noqa: E731
            assert video.tokens(k, ts_len) + 1 == len(repl.full), (n, h, w, k)


def test_subset_keeps_size_and_true_indices():
    frames = np.arange(10 * 2 * 3 * 3, dtype=np.uint8).reshape(10, 2, 3, 3)
    meta = {"frames_indices": list(range(0, 100, 10)), "fps": 5.0, "total_num_frames": 100}
    sub, sub_meta = F.PreparedVideo((frames, meta)).subset(4)
    assert sub.shape == (4, 2, 3, 3)
    assert np.array_equal(sub[1], frames[3]) and np.array_equal(sub[-1], frames[9])
    assert sub_meta["frames_indices"] == [0, 30, 60, 90] and sub_meta["total_num_frames"] == 100
    assert meta["frames_indices"] == list(range(0, 100, 10))  # the original is not changed


def _video(n, h=480, w=640, fps=30.0):
    idx = np.round(np.linspace(0, 1799, n)).astype(int).tolist()
    return F.PreparedVideo((np.zeros((n, h, w, 3), np.uint8), {"frames_indices": idx, "fps": fps}))


def test_fit_prompt_untouched_fitted_and_refused():
    ts = lambda t: 7  # noqa: E731
    v = _video(60)  # 30 groups x (300 + 2 + 7) = 9,270 tokens
    assert F.fit_prompt(100, [_video(8)], limit=8192, extra=0, ts_len=ts, fit_mode="fit") is None
    cap = F.fit_prompt(100, [v], limit=8192, extra=0, ts_len=ts, fit_mode="fit")
    assert cap == 52  # 26 x 309 = 8,034 (+99) fits; 27 x 309 = 8,343 does not
    with pytest.raises(F.VideoFitError) as e:
        F.fit_prompt(100, [v], limit=8192, extra=0, ts_len=ts, fit_mode="refuse")
    msg = str(e.value)
    assert "60 frames" in msg and "max_model_len=8192" in msg and "52 frames would fit" in msg
    assert "max_frames=52" in msg and "data:video/mp4;max_frames=52;base64" in msg
    assert e.value.fits == 52
    with pytest.raises(F.VideoFitError, match="does not fit even with 2 frames"):
        F.fit_prompt(8000, [v], limit=8192, extra=0, ts_len=ts, fit_mode="fit")
    two = [_video(60), _video(64)]
    with pytest.raises(F.VideoFitError) as e:
        F.fit_prompt(100, two, limit=10245, extra=0, ts_len=ts, fit_mode="refuse")
    assert "video 1 of 2 (60 frames), video 2 of 2 (64 frames)" in str(e.value)
    assert "frames per video would fit" in str(e.value)


def test_mode_setting():
    assert F.mode(None) in F.MODES and F.mode("REFUSE") == "refuse"
    with pytest.raises(ValueError, match="not one of"):
        F.mode("truncate")


def test_header_round_trip():
    reports = [{"frames": [(52, 60)]}, {"frames": []}, {"frames": [(8, 8), (30, 64)]}]
    value = F.header_value(reports)
    assert value == "52/60, 8/8, 30/64"
    assert F.parse_header(value) == [(52, 60), (8, 8), (30, 64)]
    assert F.parse_header(None) == [] and F.parse_header("junk, 3/") == []


def _asgi_app(report):
    async def app(scope, receive, send):
        if report is not None:  # what the renderer hook does for a prompt with a video
            H._deliver({H._KEY: report, "type": "multimodal"}, {"prompt": "p", "multi_modal_data": {}})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


@pytest.mark.parametrize("report, header", [({"frames": [(52, 60)], "prompt_tokens": 1}, "52/60"),
                                            (None, None)])
def test_middleware_adds_the_header_only_for_videos(report, header):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(H.FramesHeaderMiddleware(_asgi_app(report))({"type": "http"}, receive, send))
    headers = dict(sent[0]["headers"])
    assert headers.get(F.HEADER.encode()) == (header.encode() if header else None)
    assert H._REPORTS.get() is None  # reset after the request


def test_collecting_receives_reports_from_other_threads():
    """The offline engine renders on a thread pool, which drops context variables."""
    from concurrent.futures import ThreadPoolExecutor

    media = [{"video": [i]} for i in range(3)]
    with H.collecting("refuse") as reports:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: H._deliver({H._KEY: {"frames": [(i, 9)], "prompt_tokens": i}},
                                               {"prompt": "same text", "multi_modal_data": media[i]}),
                          range(3)))
            assert pool.submit(H._current_mode).result() == "refuse"
    by_id = {r["data_id"]: r["frames"] for r in reports}
    assert by_id == {id(media[i]): [(i, 9)] for i in range(3)}  # each report names its own media
    assert H._current_mode() == F.mode(None)


def test_fitted_uuids_are_distinct_per_frame_count():
    videos = [_video(60), _video(8)]
    assert H._fitted_uuids({"video": ["a", "b"]}, videos, 52) == {"video": ["a#frames=52", "b"]}
    assert H._fitted_uuids(None, videos, 52) is None


def test_client_warns_naming_the_input():
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    def handler(request):
        body = json.loads(request.content)
        text = body["messages"][-1]["content"][-1].get("text", "")
        headers = {F.HEADER: "52/60"} if text == "long" else {F.HEADER: "8/8"} if text == "short" else {}
        return httpx.Response(200, headers=headers, json={
            "object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"index": 0, "object": "embedding", "embedding": [1.0, 0.0]}]})

    client = EmbeddingClient(base_url="http://fake/v1", model="m",
                             http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = client.embed([{"text": "short"}, {"text": "x"}, {"text": "long"}])
    assert out.shape == (3, 2)
    msgs = [str(w.message) for w in caught if issubclass(w.category, F.VideoFitWarning)]
    assert msgs == ["inputs[2]: the server reduced video frames to fit max_model_len (52 of 60 frames)"]


def test_config_video_fit_reaches_the_server_env():
    from qwen3vl_vllm.ops.config import ConfigError, load_config
    from qwen3vl_vllm.ops.launcher import dry_run_command, server_env

    cfg = load_config(None, data={"model": "m", "kind": "embedding", "server": {"video_fit": "refuse"}})
    assert server_env(cfg, base={})[F.FIT_ENV] == "refuse"
    assert f"{F.FIT_ENV}=refuse" in dry_run_command(cfg, "m")
    assert server_env(load_config(None, data={"model": "m"}), base={})[F.FIT_ENV] == "fit"
    with pytest.raises(ConfigError, match="server.video_fit: 'cut' is not one of fit, refuse"):
        load_config(None, data={"model": "m", "server": {"video_fit": "cut"}})


def test_hf_video_processor_would_shrink_a_reference_sized_clip():
    """Why the server passes ``do_resize=False`` for videos: the HF processor shrinks a clip
    whose frames x height x width pass its cap, although the media connector already made it
    the reference's size (a 64-frame 1080p minute: 640x1152)."""
    from pathlib import Path

    from transformers import AutoProcessor

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(Path(__file__).resolve().parents[2] / ".cache" / "checkpoints",
                             kind="embedding", size="tiny")
    processor = AutoProcessor.from_pretrained(ckpt).video_processor
    clip = np.zeros((64, 640, 1152, 3), dtype=np.uint8)
    meta = {"fps": 1.0, "duration": 64.0, "total_num_frames": 64, "frames_indices": list(range(64))}
    grids = [processor(videos=[clip], video_metadata=[meta], do_sample_frames=False,
                       return_tensors="pt", **kw)["video_grid_thw"].tolist()[0] for kw in ({}, {"do_resize": False})]
    assert grids[0] != grids[1] and grids[1] == [32, 640 // 16, 1152 // 16], grids


def test_server_videos_reach_the_processor_unresized(monkeypatch):
    """With the package's connector, the renderer hands the processor ``videos_kwargs``
    with ``do_resize=False`` (and the caller's own processor kwargs kept)."""
    import types

    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", "qwen3vl")
    seen = {}

    def original(renderer, prompt, mm_data, mm_uuids, mm_processor_kwargs, *a, **kw):
        seen["kwargs"] = mm_processor_kwargs
        return {"prompt_token_ids": list(prompt)}

    renderer = types.SimpleNamespace(model_config=types.SimpleNamespace(
        model="Qwen/Qwen3-VL-Embedding-2B", max_model_len=8192, multimodal_config=None),
        get_tokenizer=lambda: types.SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2]))
    frames = np.zeros((4, 64, 64, 3), dtype=np.float32)
    meta = {"fps": 2.0, "frames_indices": [0, 1, 2, 3], "total_num_frames": 4}
    H.process_multimodal(renderer, original, [1, 2, 3], {"video": [(frames, meta)]}, None,
                         {"images_kwargs": {"min_pixels": 1}})
    assert seen["kwargs"] == {"images_kwargs": {"min_pixels": 1}, "videos_kwargs": {"do_resize": False}}
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", "http")  # vLLM's own connector: left alone
    H.process_multimodal(renderer, original, [1, 2, 3], {"video": [(frames, meta)]}, None, None)
    assert seen["kwargs"] is None
