"""The differential fuzzer: generated inputs on every path that can carry them, against the
independent reference (tests/fuzz_inputs.py makes the inputs from a seed).

Embedding paths: the offline API, ``EmbeddingClient``, plain HTTP ``/v1/embeddings`` with
``messages`` (original file bytes as data URLs, original frames, the video file itself),
SageMaker's ``/invocations`` with the same body, Cohere ``/v2/embed`` (inputs of images and
texts, default instruction) and plain ``input`` strings (text-only inputs, default
instruction). Reranker paths: the offline API, ``RerankClient``, plain ``/v1/rerank`` and plain
``/score``. A good input must match the reference on each (cosine >= 0.999999 and |Δ| <= 1e-5 per
component, |score Δ| <= 1e-5); a bad one must get a 4xx naming the item by its place in the
request (HTTP), or a typed error naming it (client, offline), never a vector.

The suite runs a fixed seed (``--fuzz-seed``, ``--fuzz-n``); a longer run:
``./launch.sh test tests/integration/test_fuzz.py --fuzz-seed 7 --fuzz-n 2000``. Figures go to
.cache/reports/fuzz.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image


pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".cache" / "reports" / "fuzz.json"
COS_BOUND, ABS_BOUND, SCORE_BOUND = 0.999999, 1e-5, 1e-5


def _record(key: str, value) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=2))
    print(f"FUZZ {key}: {json.dumps(value)[:2000]}")


def _data_url(src) -> str:
    """The original bytes of a file as a data URL (a PIL image: lossless PNG of its pixels)."""
    import base64
    import io
    import mimetypes

    if isinstance(src, Image.Image):
        buf = io.BytesIO()
        src.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    else:
        data = Path(src).read_bytes()
        mime = mimetypes.guess_type(str(src))[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _listify(v) -> list:
    return [] if v is None else (list(v) if isinstance(v, list) else [v])


def _plain_parts(obj: dict, fps=None, max_frames=None) -> list[dict]:
    """OpenAI content parts as any HTTP client would build them, with no project code: videos,
    images, texts (the reference's order); files as their original bytes; a frame list as one
    ``data:video/jpeg;base64,<f1>,<f2>,...`` URL of the original frame files; a video file with
    its fps/max_frames as data-URL parameters."""
    parts = []
    video = obj.get("video")
    videos = [video] if isinstance(video, str) or (isinstance(video, list) and video and
                                                   not isinstance(video[0], list) and
                                                   not str(video[0]).endswith((".mp4", ".webm", ".mkv", ".mov", ".ts"))) else _listify(video)
    for v in videos:
        if isinstance(v, str):
            params = "".join(f";{k}={x}" for k, x in (("fps", fps), ("max_frames", max_frames)) if x is not None)
            url = _data_url(v)
            url = url.replace(";base64,", params + ";base64,", 1)
            mime = url[5:url.index(";")]
            if not mime.startswith("video/"):
                url = "data:video/mp4" + url[url.index(";"):]
        else:
            url = "data:video/jpeg;base64," + ",".join(_data_url(f).split(",", 1)[1] for f in v)
        parts.append({"type": "video_url", "video_url": {"url": url}})
    for img in _listify(obj.get("image")):
        parts.append({"type": "image_url", "image_url": {"url": _data_url(img)}})
    for text in _listify(obj.get("text")):
        parts.append({"type": "text", "text": text})
    return parts


def _plain_embedding(model: str, item: dict) -> dict:
    import unicodedata

    instruction = (item.get("instruction") or "").strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    fps = item.get("fps")
    parts = _plain_parts(item, fps, item.get("max_frames")) or [{"type": "text", "text": "NULL"}]
    return {"model": model, "add_generation_prompt": True, "encoding_format": "float",
            "messages": [{"role": "system", "content": instruction or "Represent the user's input."},
                         {"role": "user", "content": parts}]}


def _plain_side(obj: dict):
    if set(obj) == {"text"} and isinstance(obj["text"], str):
        return obj["text"]
    return {"content": _plain_parts(obj)}


def _cohere_body(model: str, item: dict) -> dict | None:
    """A Cohere /v2/embed body for an input of images and texts with the default instruction."""
    if item.get("video") is not None or item.get("instruction") not in (None, ""):
        return None
    images = item.get("image")
    images = [] if images is None else (images if isinstance(images, list) else [images])
    texts = item.get("text")
    texts = [] if texts is None else (texts if isinstance(texts, list) else [texts])
    if not images and not texts:
        return None
    content = []
    for path in images:
        content.append({"type": "image_url", "image_url": {"url": _data_url(path)}})
    content += [{"type": "text", "text": t} for t in texts]
    return {"model": model, "inputs": [{"content": content}], "input_type": "clustering",
            "embedding_types": ["float"]}


def _input_body(model: str, item: dict) -> dict | None:
    """Plain ``input`` strings: a text-only input with the default instruction."""
    if set(item) != {"text"} or not isinstance(item["text"], str):
        return None
    return {"model": model, "input": [item["text"]], "encoding_format": "float"}


class _Tally:
    """What one fuzz test saw: checks made, the worst agreement, failures with their features."""

    def __init__(self):
        import threading

        self.checks, self.cosine, self.abs, self.failures = 0, 1.0, 0.0, []
        self.seconds: dict[str, float] = {}  # per path, summed over the cases
        self._lock = threading.Lock()

    def timed(self, label: str, fn, *a, **kw):
        t0 = time.monotonic()
        try:
            return fn(*a, **kw)
        finally:
            with self._lock:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.monotonic() - t0

    def fail(self, case, what: str) -> None:
        with self._lock:
            self.failures.append(f"{case.name} {what} {case.features}")

    def vector(self, case, label: str, vec, ref) -> None:
        vec = np.asarray(vec, dtype=np.float32)
        cos, diff = float(vec @ ref), float(np.abs(vec - ref).max())
        with self._lock:
            self.checks += 1
            self.cosine, self.abs = min(self.cosine, cos), max(self.abs, diff)
        if cos < COS_BOUND or diff > ABS_BOUND:
            self.fail(case, f"{label}: cosine {cos:.7f} |Δ| {diff:.2e}")

    def scores(self, case, label: str, scores, ref) -> None:
        with self._lock:
            self.checks += 1
        if len(scores) != len(ref):
            self.fail(case, f"{label}: {len(scores)} scores for {len(ref)} documents")
            return
        diff = max(abs(a - b) for a, b in zip(scores, ref, strict=True))
        with self._lock:
            self.abs = max(self.abs, diff)
        if diff > SCORE_BOUND:
            self.fail(case, f"{label}: |Δ| {diff:.2e}")

    def refused(self, case, label: str, status: int, message: str, where: str) -> None:
        """A bad input: a 4xx (or a typed error, status 0) whose message names the item."""
        with self._lock:
            self.checks += 1
        if not ((status == 0 or 400 <= status < 500) and message.startswith(where)):
            self.fail(case, f"{label}: {status} {message[:300]!r} (wanted an error naming {where})")


# server paths run on a few threads: the servers batch concurrent requests (figures only)
THREADS = 4


def _references(t: _Tally, cases, compute) -> dict:
    """The reference's answer for every good input, all first: while the servers are busy their
    engine workers spin for a second after each request and would slow the reference's torch
    threads many times over."""
    refs = {}
    for case in cases:
        if case.bad:
            continue
        try:
            refs[case.name] = t.timed("reference", compute, case.item)
        except Exception as e:  # noqa: BLE001 - a finding about the generator or the reference
            t.fail(case, f"reference: {type(e).__name__}: {e}")
    return refs


def _each(fn, cases) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(fn, cases))


def _http_error(r) -> tuple[int, str]:
    try:
        return r.status_code, r.json().get("error", {}).get("message", "") if r.status_code != 200 else ""
    except ValueError:
        return r.status_code, r.text


def _embedding_case(case, t: _Tally, *, model, server, client, http, offline, offline_errors, ref):
    from qwen3vl_vllm.errors import InputError, MediaError

    plain = _plain_embedding(model, case.item)
    inputs = _input_body(model, case.item)
    if case.truncate:  # over max_length: every path asks for the reference's cut (vLLM's field)
        cut = {"truncate_prompt_tokens": -1, "truncation_side": "right"}
        plain = {**plain, **cut}
        inputs = inputs and {**inputs, **cut}
    paths = (("messages", server.base_url + "/embeddings", plain),
             ("invocations", server.url + "/invocations", plain),
             ("v2/embed", server.url + "/v2/embed", _cohere_body(model, case.item)),  # END: the cut
             ("input", server.base_url + "/embeddings", inputs))
    if case.bad:  # every path: an error naming the item, never a vector
        name = f"fuzz/{case.name}"
        message = "a vector" if name in offline else offline_errors.get(name, "").split(": ", 1)[-1]
        t.refused(case, "offline", 0, message, "inputs[0]")
        try:
            client.embed([case.item])
            t.refused(case, "client", 0, "a vector", "inputs[0]")
        except (MediaError, InputError) as e:
            t.refused(case, "client", 0, str(e), "inputs[0]")
        for label, url, body in paths[:2]:
            t.refused(case, label, *_http_error(http.post(url, json=body)), "messages[1].content[0]")
        return
    if f"fuzz/{case.name}" in offline:
        t.vector(case, "offline", offline[f"fuzz/{case.name}"], ref)
    else:
        t.fail(case, f"offline: {offline_errors.get(f'fuzz/{case.name}')}")
    try:
        t.vector(case, "client", t.timed("client", client.embed, [case.item], truncate=case.truncate)[0], ref)
    except Exception as e:  # noqa: BLE001 - a finding, reported with the features
        t.fail(case, f"client: {type(e).__name__}: {e}")
    for label, url, body in paths:
        if body is None:
            continue
        r = t.timed(label, http.post, url, json=body)
        if r.status_code != 200:
            t.fail(case, f"{label}: {r.status_code} {r.text[:300]}")
            continue
        payload = r.json()
        t.vector(case, label, payload["embeddings"]["float"][0] if label == "v2/embed"
                 else payload["data"][0]["embedding"], ref)


def test_fuzz_embedding(fuzz, offline_results, embedding_server, reference_embedder):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    offline, offline_errors, _ = offline_results
    t, t0 = _Tally(), time.monotonic()
    refs = _references(t, fuzz.embedding, lambda item: reference_embedder.process([item])[0])
    with EmbeddingClient(base_url=embedding_server.base_url) as client, httpx.Client(timeout=300) as http:
        def one(case):
            try:
                _embedding_case(case, t, model=embedding_server.model, server=embedding_server,
                                client=client, http=http, offline=offline,
                                offline_errors=offline_errors, ref=refs.get(case.name))
            except Exception as e:  # noqa: BLE001 - the fuzzer reports what breaks, and goes on
                t.fail(case, f"{type(e).__name__}: {e}")

        _each(one, fuzz.embedding)
    _record("embedding", {"seed": fuzz.seed, "inputs": len(fuzz.embedding),
                          "bad_inputs": sum(c.bad is not None for c in fuzz.embedding),
                          "checks": t.checks, "worst_cosine": t.cosine, "worst_abs": t.abs,
                          "seconds": round(time.monotonic() - t0, 1),
                          "generation_seconds": round(fuzz.seconds, 1),
                          "seconds_per_path": {k: round(v, 1) for k, v in t.seconds.items()},
                          "failures": sorted(t.failures)[:80]})
    assert len(fuzz.embedding) >= 100
    assert not t.failures, "\n".join(t.failures[:40])


def _rerank_case(case, t: _Tally, *, model, server, client, http, offline, ref):
    from qwen3vl_vllm.errors import InputError, MediaError

    item = case.item
    q, docs = _plain_side(item["query"]), [_plain_side(d) for d in item["documents"]]
    extra = {"instruction": item["instruction"]} if "instruction" in item else {}
    paths = (("rerank", server.url + "/v1/rerank", {"query": q, "documents": docs}, "results", "relevance_score"),
             ("score", server.url + "/score", {"queries": q, "documents": docs}, "data", "score"))
    if case.bad:
        message = "scores" if case.name in offline["fuzz"] else offline["fuzz_errors"].get(case.name, "")
        t.refused(case, "offline", 0, message.split(": ", 1)[-1], "documents[1]")
        try:
            client.score(item["query"], item["documents"], instruction=item.get("instruction"))
            t.refused(case, "client", 0, "scores", "documents[1]")
        except (MediaError, InputError) as e:
            t.refused(case, "client", 0, str(e), "documents[1]")
        for label, url, body, _, _ in paths:
            r = http.post(url, json={"model": model, **body, **extra})
            t.refused(case, label, *_http_error(r), "documents[1].content[0]")
        return
    if case.name in offline["fuzz"]:
        t.scores(case, "offline", offline["fuzz"][case.name], ref)
    else:
        t.fail(case, f"offline: {offline['fuzz_errors'].get(case.name)}")
    try:
        t.scores(case, "client", t.timed("client", client.score, item["query"], item["documents"],
                                         instruction=item.get("instruction")), ref)
    except Exception as e:  # noqa: BLE001
        t.fail(case, f"client: {type(e).__name__}: {e}")
    for label, url, body, key, field in paths:
        r = t.timed(label, http.post, url, json={"model": model, **body, **extra})
        if r.status_code != 200:
            t.fail(case, f"{label}: {r.status_code} {r.text[:300]}")
            continue
        t.scores(case, label, [float(x[field]) for x in sorted(r.json()[key], key=lambda x: x["index"])], ref)


def test_fuzz_rerank(fuzz, offline_rerank, reranker_server, reference_reranker):
    from qwen3vl_vllm import RerankClient

    offline, _ = offline_rerank
    t, t0 = _Tally(), time.monotonic()
    refs = _references(t, fuzz.rerank, reference_reranker.process)
    with RerankClient(base_url=reranker_server.base_url) as client, httpx.Client(timeout=300) as http:
        def one(case):
            try:
                _rerank_case(case, t, model=reranker_server.model, server=reranker_server,
                             client=client, http=http, offline=offline, ref=refs.get(case.name))
            except Exception as e:  # noqa: BLE001 - the fuzzer reports what breaks, and goes on
                t.fail(case, f"{type(e).__name__}: {e}")

        _each(one, fuzz.rerank)
    _record("rerank", {"seed": fuzz.seed, "inputs": len(fuzz.rerank),
                       "bad_inputs": sum(c.bad is not None for c in fuzz.rerank), "checks": t.checks,
                       "worst_abs": t.abs, "seconds": round(time.monotonic() - t0, 1),
                       "seconds_per_path": {k: round(v, 1) for k, v in t.seconds.items()},
                       "failures": sorted(t.failures)[:80]})
    assert len(fuzz.rerank) >= 30
    assert not t.failures, "\n".join(t.failures[:40])
