"""Security at the edges, on a live reranker started as users start it (`qwen3vl-vllm serve`
with an API key): every route behind the key, bounded decoding, server-side fetches.

The server has small limits so that the refusals happen with moderate inputs (a 64 MiB decode
budget per request, 1 s of decoding), remote fetches switched on for one exact loopback origin
(a test HTTP server), and writes its route table for the route test. The default-budget bomb
runs against the plain `vllm serve` test server (test_hardening.py). Figures go to
.cache/reports/security.json.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cases import noise_image, png_bytes, resolution_change_ts
from launched import Launched
from route_checks import assert_every_route_behind_the_key, post_paths, probe_routes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".cache" / "reports" / "security.json"
KEY = "security-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BUDGET = 64 * 2**20
BODIES_IN_FLIGHT = 8 * 2**20  # request bodies held at once (the tests' requests come one at a time)
BODY_TIMEOUT_S = 15  # waiting on a client for one body: outlasts the pool's 10 s wait below
HEADER_TIMEOUT_S = 2  # first byte to the end of the headers


def record(key, value):
    from test_hardening import record as _record

    _record(key, value, report=REPORT, tag="SECURITY")


class _MediaServers:
    """Two HTTP servers on 127.0.0.1: ``a`` is the origin the server may fetch from; ``b``
    only counts the connections it gets (a refused redirect must never reach it)."""

    def __init__(self):
        png = png_bytes(noise_image(96, 64, 5))
        self.png = png
        self.b_connections = 0
        outer = self

        class A(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/img.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(png)))
                    self.end_headers()
                    self.wfile.write(png)
                elif self.path in ("/to-b", "/to-private"):
                    self.send_response(302)
                    self.send_header("Location", f"{outer.b}/img.png" if self.path == "/to-b"
                                     else "http://10.255.255.1/x.png")
                    self.end_headers()
                elif self.path == "/drip":  # a byte every 0.3 s: no read ever times out
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(200):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.3)
                    except OSError:
                        pass

            def log_message(self, *a):
                pass

        class B(A):
            def setup(self):
                outer.b_connections += 1
                super().setup()

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls) for cls in (A, B)]
        for s in self.servers:
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.a, self.b = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)
        from qwen3vl_vllm.ops.launcher import free_port

        self.closed = f"http://127.0.0.1:{free_port()}"  # allowed, but nothing listens there

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def media_servers():
    servers = _MediaServers()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def keyed(media_servers, reranker_ckpt, tmp_path_factory):
    table = tmp_path_factory.mktemp("routes") / "routes.json"
    srv = Launched("configs/tiny-reranker-cpu.yaml", f"media.max_decoded_bytes_per_request={BUDGET}",
                   "media.max_decode_seconds=1", "media.remote_fetch=true",
                   f"server.max_request_bytes_in_flight={BODIES_IN_FLIGHT}",
                   f"server.body_timeout_s={BODY_TIMEOUT_S}", f"server.header_timeout_s={HEADER_TIMEOUT_S}",
                   name="security-reranker",
                   env_extra={"QWEN3VL_API_KEY": KEY, "QWEN3VL_ROUTE_TABLE": str(table),
                              "QWEN3VL_MEDIA_ALLOWED_ORIGINS": f"{media_servers.a},{media_servers.closed}",
                              "VLLM_IMAGE_FETCH_TIMEOUT": "2"})
    try:
        srv.wait_listening()
        srv.table = table
        yield srv
    finally:
        srv.kill()


def _doc(url: str, kind: str = "image") -> dict:
    return {"content": [{"type": f"{kind}_url", f"{kind}_url": {"url": url}}]}


def _rerank(srv, documents, path="/v1/rerank", headers=AUTH, **extra):
    return httpx.post(srv.url + path, headers=headers, timeout=120,
                      json={"query": "a cat", "documents": documents, **extra})


def _still_serving(srv):
    r = _rerank(srv, ["a cat on a mat", "stock prices"])
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1]


def _message(r) -> str:
    return r.json()["error"]["message"]


def test_every_route_answers_401_without_the_key(keyed):
    rows = probe_routes(keyed.url, keyed.table, KEY)
    assert_every_route_behind_the_key(rows)
    paths = {r["path"] for r in rows}
    for expected in ("/rerank", "/score", "/invocations", "/pooling", "/classify", "/tokenize",
                     "/v1/rerank", "/metrics", "/version", "/health", "/ping"):
        assert expected in paths, (expected, sorted(paths))  # the table is the running app's
    record("route_table_reranker", rows)


def _every_post_route_refuses(srv, body: dict, message: str) -> dict:
    """POST ``body`` to every POST route of the running app: each must answer 400 with a message
    that starts with ``message``. Returns the status by path."""
    answers = {}
    for path in post_paths(srv.table):
        r = httpx.post(srv.url + path, headers=AUTH, json=body, timeout=60)
        answers[path] = r.status_code
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert _message(r).startswith(message), (path, _message(r))
    return answers


def test_every_post_route_counts_items(keyed):
    """Every POST route of the running app (its own route table) refuses a body with more than
    2,048 items with a 400 naming the field and the fix, before vLLM parses it; the server then
    goes on serving."""
    body = {"model": "x", "query": "q", "input": ["a"] * 2049}
    paths = post_paths(keyed.table)
    for expected in ("/v1/rerank", "/rerank", "/score", "/invocations", "/pooling", "/classify"):
        assert expected in paths, (expected, paths)
    answers = _every_post_route_refuses(keyed, body, "input: 2049 items in one request, above "
                                               "this server's limit of 2048")
    r = _rerank(keyed, ["d"] * 2049)
    assert r.status_code == 400 and _message(r).startswith("documents: 2049 items"), r.text[:300]
    _still_serving(keyed)
    record("item_limit_routes", answers)


def test_every_post_route_bounds_the_text_it_tokenises(keyed):
    """A 21 KB body whose query, paired with each of its 1,025 documents, would make the server
    tokenise 16.8 million characters (vLLM tokenises every pair whole: a 300,000-character query
    with 40 documents took 9 s on this server's model) gets a 400 on every POST route of the
    running app; so do a 4 Mi + 1 character document, /tokenize prompt (4 GB and 32 s for 20 M
    characters there) and /detokenize id list. What fits is scored, and the server goes on
    serving."""
    amplified = {"model": "x", "query": "q" * 16384, "documents": ["d"] * 1025}
    answers = _every_post_route_refuses(keyed, amplified, "query: 16384 characters, tokenised once "
                                        "per document (1025 documents): 16794625 characters for "
                                        "this request, above this server's limit of 16777216")
    long_text = "a" * (4 * 1024 * 1024 + 1)
    r = _rerank(keyed, ["a cat", long_text])
    assert r.status_code == 400 and _message(r).startswith(
        "documents[1]: 4194305 characters in one text, above this server's limit of 4194304"), r.text[:300]
    assert "QWEN3VL_MAX_TEXT_CHARS" in _message(r)
    r = httpx.post(keyed.url + "/tokenize", headers=AUTH, timeout=60, json={"prompt": long_text})
    assert r.status_code == 400 and _message(r).startswith("prompt: 4194305 characters"), r.text[:300]
    r = httpx.post(keyed.url + "/detokenize", headers=AUTH, timeout=60,
                   json={"tokens": [64] * (4 * 1024 * 1024 + 1)})
    assert r.status_code == 400 and _message(r).startswith("tokens: 4194305 token ids"), r.text[:300]
    # a query paired with documents within the limit: scored, one result per document
    r = _rerank(keyed, ["a cat on a mat", "stock prices", "q" * 2000])
    assert r.status_code == 200 and sorted(x["index"] for x in r.json()["results"]) == [0, 1, 2]
    _still_serving(keyed)
    record("text_limit_routes", answers)


def _upload(srv, declared: int, first: bytes) -> socket.socket:
    """A POST to /v1/rerank that declares ``declared`` bytes and sends ``first`` of them."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\n"
              b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + first)
    return s


def _answer(s: socket.socket) -> tuple[int, str]:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["message"]


def test_request_bodies_in_flight_are_bounded(keyed):
    """Bodies are charged to the pool as they arrive, and waited for at most the body timeout.

    - 16 uploads that each declare 8 MiB - 1,000 bytes and send 10 hold 160 bytes, not 128 MiB:
      a request sent beside them is served.
    - One that sends 8 MiB - 1,000 bytes and stalls before its last 10 holds that room: a 6 KB
      request to every POST route of the running app waits for room (10 s, all at once) and
      gets 503 with Retry-After, naming the setting.
    - The stalled one gets 408 naming the timeout once the server has waited 15 s for it; its
      room is free again, and a request of 6 MB goes through the pool to the checks behind it."""
    from concurrent.futures import ThreadPoolExecutor

    declared = BODIES_IN_FLIGHT - 1000
    slow = [_upload(keyed, declared, b"{\"query\": ") for _ in range(16)]
    try:
        time.sleep(1.0)
        r = _rerank(keyed, ["a cat on a mat", "d" * 2000])
        assert r.status_code == 200, r.text[:300]
    finally:
        for s in slow:
            s.close()

    # 6 KB: long enough that the middleware reads it on every path (a route that reads no body,
    # such as POST /ping, would otherwise answer without holding any)
    small = {"model": "x", "query": "q", "documents": ["d" * 6000]}
    paths = post_paths(keyed.table)
    body = b"{\"query\": \"" + b"q" * (declared - 20)
    holder = _upload(keyed, declared + 10, body)
    t0 = time.monotonic()
    try:
        time.sleep(1.0)

        def post(path):
            return path, httpx.post(keyed.url + path, headers=AUTH, json=small, timeout=60)

        with ThreadPoolExecutor(16) as pool:
            answers = dict(pool.map(post, paths))
        for path, r in answers.items():
            assert r.status_code == 503, (path, r.status_code, r.text[:300])
            assert r.headers.get("retry-after") == "2", (path, dict(r.headers))
            assert _message(r).startswith(f"server busy: it holds {len(body)} bytes of request "
                                          "bodies in flight"), (path, _message(r))
            assert "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT" in _message(r)
        status, message = _answer(holder)
        seconds = time.monotonic() - t0
    finally:
        holder.close()
    assert status == 408 and message.startswith(f"request body: {len(body)} of {declared + 10} bytes "
                                                f"arrived in the {BODY_TIMEOUT_S} s this server waits "
                                                "for a body (QWEN3VL_BODY_TIMEOUT_S)"), (status, message)
    assert seconds > BODY_TIMEOUT_S - 1, seconds  # answered by the timeout, not before
    r = httpx.post(keyed.url + "/tokenize", headers=AUTH, timeout=60, json={"prompt": "a" * 6_000_000})
    assert r.status_code == 400 and _message(r).startswith("prompt: 6000000 characters in one text"), r.text[:300]
    _still_serving(keyed)
    record("bodies_in_flight_routes", {p: r.status_code for p, r in answers.items()})
    record("stalled_body", {"status": status, "seconds": round(seconds, 2)})


def _head_answer(srv, first: bytes, pieces: int) -> tuple[bytes, int]:
    """Send ``first`` then up to ``pieces`` pieces of 64 KiB of a head that never ends; the
    answer's status line and how many pieces went out before the server closed."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(first)
        sent = 0
        try:
            for sent in range(1, pieces + 1):
                s.sendall(b"a" * 65536)
        except OSError:  # the server closed the connection: the rest cannot go out
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    return data.split(b"\r\n", 1)[0], sent


def test_request_heads_are_bounded(keyed):
    """uvicorn's httptools parser grows a header or the URL without a bound, before any key is
    checked (one connection streaming a 300 MB header held a core for 114 s and +470 MB): past
    64 KiB of line and headers the server answers 431 and closes. A 60 KB header passes. Headers
    sent a line now and then get 408 at the header timeout (2 s here)."""
    first, sent = _head_answer(keyed, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nX-Big: ", 32)
    assert first == b"HTTP/1.1 431 Request Header Fields Too Large", (first, sent)
    url, _ = _head_answer(keyed, b"GET /health?q=", 32)
    assert url == b"HTTP/1.1 431 Request Header Fields Too Large", url
    r = httpx.get(keyed.url + "/health", headers={"X-Pad": "p" * 60_000}, timeout=30)
    assert r.status_code == 200, r.text[:200]
    # Slowloris: a header line now and then holds the connection until the header timeout
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        time.sleep(HEADER_TIMEOUT_S / 2)
        s.sendall(b"X-Slow: 1\r\n")
        slow = s.recv(4096)
        seconds = time.monotonic() - t0
        assert s.recv(4096) == b""  # closed
    assert slow.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"QWEN3VL_HEADER_TIMEOUT_S" in slow, slow
    assert seconds > HEADER_TIMEOUT_S - 0.5, seconds  # at the timeout, not before
    _still_serving(keyed)
    record("request_heads", {"header_431_after_pieces_of_64KiB": sent, "url": url.decode(),
                             "slow_headers_408_after_s": round(seconds, 2)})


def test_nothing_is_read_before_the_key(keyed):
    """A keyless request is answered 401 before its body is read: a 60 MiB upload that never
    comes still gets its 401, and a keyless malformed body is a 401, not a 400."""
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 62914560\r\n\r\n{\"query\": ")
        first = s.recv(4096).split(b"\r\n", 1)[0]
        seconds = time.monotonic() - t0
    assert first == b"HTTP/1.1 401 Unauthorized", first
    r = httpx.post(keyed.url + "/rerank", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 401 and "Authorization: Bearer" in _message(r)
    record("keyless_60mib_upload", {"status": 401, "seconds_to_answer": round(seconds, 4)})


def _frame_list(n: int, side: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    frame = base64.b64encode(buf.getvalue()).decode()
    return "data:video/png;base64," + ",".join([frame] * n)


def test_frame_list_over_the_request_budget_is_refused(keyed):
    """20 solid 1024x1024 frames decode to 80 MiB, over this server's 64 MiB: refused from
    the frames' headers, before a pixel is decoded; 4 such frames (16 MiB) are served."""
    t0 = time.monotonic()
    r = _rerank(keyed, [_doc(_frame_list(20, 1024), "video")])
    seconds = time.monotonic() - t0
    assert r.status_code == 400, r.text
    message = _message(r)
    assert message.startswith("documents[0].content[0].frames: decoding it would bring this "
                              "request to 80.0 MiB decoded, above the limit of 64.0 MiB "
                              "(QWEN3VL_MAX_REQUEST_DECODED_BYTES)"), message
    ok = _rerank(keyed, [_doc(_frame_list(4, 1024), "video")])
    assert ok.status_code == 200, ok.text
    _still_serving(keyed)
    record("frame_list_over_budget", {"frames": 20, "side": 1024, "status": 400,
                                      "seconds": round(seconds, 3), "message": message})


def test_resolution_change_mid_stream_is_refused(keyed, tmp_path):
    """The container header says 64x48; the stream switches to 256x192: refused at the first
    frame of the new size, whatever the header said."""
    data = resolution_change_ts(tmp_path / "rc.ts").read_bytes()
    r = _rerank(keyed, ["a cat", _doc("data:video/mp2t;base64," + base64.b64encode(data).decode(), "video")])
    assert r.status_code == 400, r.text
    assert _message(r).startswith("documents[1].content[0]: the video's resolution changes "
                                  "mid-stream (64x48 -> 256x192"), _message(r)
    _still_serving(keyed)


def test_a_video_that_decodes_for_too_long_is_refused(keyed, long_videos):
    """The 10-minute clip takes seconds to decode here; the server allows 1 s per request."""
    data = long_videos[10].read_bytes()
    t0 = time.monotonic()
    r = _rerank(keyed, [_doc("data:video/mp4;base64," + base64.b64encode(data).decode(), "video")])
    seconds = time.monotonic() - t0
    assert r.status_code == 400, r.text
    assert _message(r).startswith("documents[0].content[0]: decoding this request's media took "
                                  "longer than 1 s (QWEN3VL_MAX_DECODE_SECONDS)"), _message(r)
    _still_serving(keyed)
    record("slow_video_decode", {"clip": "10 min 640x480 30 fps", "limit_s": 1, "status": 400,
                                 "seconds_to_answer": round(seconds, 2)})


def test_invocations_get_the_same_policy_and_naming(keyed):
    bad = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nrubbish").decode()
    r = _rerank(keyed, ["fine", _doc(bad)], path="/invocations")
    assert r.status_code == 400 and _message(r).startswith("documents[1].content[0]: cannot decode the image"), r.text
    r = _rerank(keyed, [], path="/invocations")
    assert r.status_code == 400 and _message(r).startswith("documents: empty list"), r.text
    assert _rerank(keyed, ["x"], path="/invocations", headers={}).status_code == 401


def test_server_side_fetches(keyed, media_servers):
    """Fetches are on for one exact origin: its image scores as the same bytes sent inline; a
    redirect from it to another loopback port or to a private address, and a CGNAT address,
    are refused without connecting; a server that drips bytes is cut at the fetch's deadline."""
    inline = "data:image/png;base64," + base64.b64encode(media_servers.png).decode()
    fetched = _rerank(keyed, [_doc(media_servers.a + "/img.png"), _doc(inline)])
    assert fetched.status_code == 200, fetched.text
    scores = {x["index"]: x["relevance_score"] for x in fetched.json()["results"]}
    assert abs(scores[0] - scores[1]) < 1e-6, scores
    refused = {}
    for name, url, fragment in (
            ("redirect to another loopback port", media_servers.a + "/to-b", "points to 127.0.0.1"),
            ("redirect to a private address", media_servers.a + "/to-private", "points to 10.255.255.1"),
            ("CGNAT (cloud metadata) address", "http://100.100.100.200/latest/meta-data", "points to 100.100.100.200"),
            ("loopback, another port", media_servers.b + "/img.png", "points to 127.0.0.1"),
            ("allowed origin, nothing listening", media_servers.closed + "/x.png", "cannot fetch")):
        r = _rerank(keyed, ["a cat", _doc(url)])
        assert r.status_code == 400, (name, r.text)
        assert _message(r).startswith("documents[1].content[0]:") and fragment in _message(r), (name, _message(r))
        refused[name] = _message(r)[:200]
    assert media_servers.b_connections == 0, "a refused address was connected to"
    t0 = time.monotonic()
    r = _rerank(keyed, [_doc(media_servers.a + "/drip")])
    seconds = time.monotonic() - t0
    assert r.status_code == 400 and "timed out after 2s (the whole fetch)" in _message(r), r.text
    _still_serving(keyed)
    record("server_fetches", {"allowed_origin_score_delta": abs(scores[0] - scores[1]),
                              "refused": refused, "drip_seconds_to_answer": round(seconds, 2)})


def test_local_files_are_off_by_default(keyed, tmp_path):
    path = tmp_path / "in.png"
    noise_image(64, 64, 7).save(path)
    r = _rerank(keyed, [_doc(f"file://{path}")])
    assert r.status_code == 400 and "reads no local files" in _message(r), r.text


def test_sigterm_stops_cleanly(keyed):
    """Last in this module: the launcher stops on SIGTERM with exit code 0 and no vLLM process
    left behind."""
    from test_launcher import _alive

    children = set(keyed.descendants)
    assert children, "the launcher should have started vLLM processes"
    assert keyed.terminate() == 0
    deadline = time.monotonic() + 30
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(children) == []
