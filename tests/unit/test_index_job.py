"""The index job's bookkeeping with a fake backend (no engine): resume without recomputing,
nothing lost, refusals that name what changed, the servers backend over fake transports,
LanceDB and flat search."""

from __future__ import annotations

import base64
import hashlib
import json
import threading

import httpx
import numpy as np
import pytest

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index import parts
from qwen3vl_vllm.index.backends import JobSettings, ServersBackend
from qwen3vl_vllm.index.job import run_index
from qwen3vl_vllm.index.search import format_hits, search

DIM = 16


def fake_vector(item: dict) -> np.ndarray:
    seed = int(hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:8], 16)
    v = np.random.RandomState(seed).randn(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeBackend:
    """Deterministic vectors from the item; "fail" in a text is an item error; ``crash_after``
    chunks, it raises as a killed process would stop."""

    name = "fake"

    def __init__(self, crash_after: int | None = None):
        self.calls: list[list[str]] = []
        self.crash_after = crash_after
        self.closed = False

    def embed(self, items, places):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(list(places))
        out = []
        for item, place in zip(items, places):
            if "fail" in str(item.get("text", "")):
                out.append({"error": f"{place}.text[0]: refused by the fake", "error_type": "InputError"})
            else:
                out.append({"vector": fake_vector(item), "prompt_tokens": 7, "video_frames": []})
        return out

    def close(self):
        self.closed = True


def corpus(tmp_path, n=23, extra=()):
    p = tmp_path / "c.jsonl"
    rows = [{"id": f"r{i}", "text": f"row {i}" + (" fail" if i % 7 == 3 else "")} for i in range(n)]
    rows += list(extra)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p, rows


def _vectors(out):
    t = parts.read_columns(out, "vectors", ["id", "vector"])
    dtype = t.schema.field("vector").type.value_type.to_pandas_dtype()
    return {i: np.asarray(v, dtype=dtype) for i, v in zip(t.column("id").to_pylist(),
                                                          t.column("vector").to_pylist())}


def _errors(out):
    t = parts.read_columns(out, "errors", ["id", "error"])
    return dict(zip(t.column("id").to_pylist(), t.column("error").to_pylist()))


def test_complete_run_counts_and_item_errors(tmp_path):
    src, rows = corpus(tmp_path, extra=[{"id": "r1", "text": "again"}])
    fake = FakeBackend()
    s = run_index(src, model="m", out=tmp_path / "out", backend=fake, chunk_size=5, progress=False)
    assert (s.inputs, s.vectors, s.errors, s.chunks) == (24, 20, 4, 5)
    assert fake.closed
    errs = _errors(tmp_path / "out")
    assert errs["r3"] == "row 3 (id 'r3').text[0]: refused by the fake"
    assert "duplicate id 'r1' (first at row 1)" in [m for i, m in errs.items() if i == "r1"][0]
    vec = _vectors(tmp_path / "out")
    assert np.allclose(vec["r0"], fake_vector({"text": "row 0"}))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["complete"] and m["counts"] == {"inputs": 24, "vectors": 20, "errors": 4, "chunks": 5}
    assert "indexed 24 inputs: 20 vectors + 4 errors = 24 (ok)" in s.text()


def test_crash_then_resume_recomputes_nothing_and_equals_an_uninterrupted_run(tmp_path):
    src, _ = corpus(tmp_path, n=40)
    whole = run_index(src, model="m", out=tmp_path / "whole", backend=FakeBackend(), chunk_size=6,
                      progress=False)
    crashing = FakeBackend(crash_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_index(src, model="m", out=tmp_path / "out", backend=crashing, chunk_size=6, progress=False)
    assert len(parts.finished(tmp_path / "out")) == 3
    assert not json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"]
    # a half-written file from the moment of the kill is cleaned up, not read
    (tmp_path / "out" / "vectors" / ".part-000003.parquet.tmp-1").write_bytes(b"PAR1 half")
    (tmp_path / "out" / "vectors" / "part-000004.parquet").write_bytes(b"no marker: not done")
    again = FakeBackend()
    s = run_index(src, model="m", out=tmp_path / "out", backend=again, chunk_size=6, progress=False)
    done_before = {p for call in crashing.calls for p in call}
    done_after = {p for call in again.calls for p in call}
    assert not done_before & done_after, "a finished chunk was embedded again"
    assert len(done_before | done_after) == 40
    assert (s.inputs, s.vectors + s.errors, s.chunks_this_run) == (40, 40, 4)
    a, b = _vectors(tmp_path / "whole"), _vectors(tmp_path / "out")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert _errors(tmp_path / "whole") == _errors(tmp_path / "out")
    assert whole.vectors == s.vectors
    assert not list((tmp_path / "out").rglob(".*tmp*"))


@pytest.mark.parametrize("change, named", [
    ({"dimensions": 8}, "dimensions: None in the folder, 8 now"),
    ({"precision": "int8"}, "precision: 'float32' in the folder, 'int8' now"),
    ({"instruction": "Find photos"}, "instruction: \"Represent the user's input.\" in the folder, 'Find photos.' now"),
    ({"dtype": "bfloat16"}, "dtype: 'auto' in the folder, 'bfloat16' now"),
    ({"max_pixels": 100352}, "max_pixels: 1843200 in the folder, 100352 now"),
    ({"fps": 2.0}, "fps: 1.0 in the folder, 2.0 now"),
    ({"truncate": True}, "truncate: False in the folder, True now"),
    ({"engine": {"max_model_len": 4096}}, "engine.max_model_len: None in the folder, 4096 now"),
    ({"model": "other"}, "model: 'm' in the folder, 'other' now"),
])
def test_resume_refuses_a_setting_that_changes_vectors(tmp_path, change, named):
    src, _ = corpus(tmp_path, n=5)
    run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(), progress=False)
    kw = {"model": "m", **change}
    with pytest.raises(JobError, match="cannot resume") as e:
        run_index(src, out=tmp_path / "out", backend=FakeBackend(), progress=False, **kw)
    assert named in str(e.value)


def test_defaults_given_explicitly_are_the_same_job(tmp_path):
    src, _ = corpus(tmp_path, n=5)
    run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(), progress=False)
    fake = FakeBackend()
    run_index(src, model="m", out=tmp_path / "out", backend=fake, progress=False, fps=1.0,
              instruction="Represent the user's input", precision="float32",
              engine={"gpu_memory_utilization": 0.5})  # not a vector setting
    assert fake.calls == []


def test_a_changed_source_chunk_size_or_folder_is_refused(tmp_path):
    src, rows = corpus(tmp_path, n=12)
    out = tmp_path / "out"
    run_index(src, model="m", out=out, backend=FakeBackend(), chunk_size=4, progress=False)
    with pytest.raises(JobError, match="chunks of 4 rows, not 5"):
        run_index(src, model="m", out=out, backend=FakeBackend(), chunk_size=5, progress=False)
    rows[2]["text"] = "edited"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(JobError, match=r"the source changed .* chunk 0 \(rows 0-3\)"):
        run_index(src, model="m", out=out, backend=FakeBackend(), chunk_size=4, progress=False)
    rows[2]["text"] = "row 2"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    with pytest.raises(JobError, match="fewer than an earlier run"):
        run_index(src, model="m", out=out, backend=FakeBackend(), chunk_size=4, progress=False)
    other = tmp_path / "other.jsonl"
    other.write_text(src.read_text())
    with pytest.raises(JobError, match="indexes .*c.jsonl"):
        run_index(other, model="m", out=out, backend=FakeBackend(), chunk_size=4, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(JobError, match="not empty and holds no manifest.json"):
        run_index(src, model="m", out=tmp_path / "busy", backend=FakeBackend(), progress=False)


def test_appended_rows_are_indexed_on_rerun(tmp_path):
    src, rows = corpus(tmp_path, n=8)
    run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(), chunk_size=4, progress=False)
    src.write_text(src.read_text() + json.dumps({"id": "new", "text": "appended"}) + "\n")
    fake = FakeBackend()
    s = run_index(src, model="m", out=tmp_path / "out", backend=fake, chunk_size=4, progress=False)
    assert fake.calls == [["row 8 (id 'new')"]] and s.inputs == 9


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    src, _ = corpus(tmp_path, n=2)
    for kw, msg in [({"precision": "float16"}, "precision must be one of"),
                    ({"dimensions": 0}, "dimensions must be"), ({"chunk_size": 0}, "chunk_size must be"),
                    ({"backend": "gpu"}, "backend must be one of"),
                    ({"store": "lancedb", "precision": "int8"}, "LanceDB store holds float32")]:
        with pytest.raises(JobError, match=msg):
            run_index(src, model="m", out=tmp_path / "never", progress=False, **kw)
    assert not (tmp_path / "never").exists()


def test_verify_catches_a_lost_row(tmp_path):
    from qwen3vl_vllm.index.job import verify

    src, _ = corpus(tmp_path, n=8)
    run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(), chunk_size=4, progress=False)
    assert verify(tmp_path / "out", 8) == (7, 1)
    (tmp_path / "out" / "vectors" / "part-000001.parquet").unlink()
    with pytest.raises(JobError, match="rows missing or repeated"):
        verify(tmp_path / "out", 8)


def test_int8_and_binary_shards(tmp_path):
    from qwen3vl_vllm.quantize import quantize

    src, _ = corpus(tmp_path, n=4)
    for precision, dtype in (("int8", np.int8), ("ubinary", np.uint8), ("binary", np.int8)):
        out = tmp_path / precision
        run_index(src, model="m", out=out, backend=FakeBackend(), precision=precision, progress=False)
        v = _vectors(out)["r0"]
        assert v.dtype == dtype
        assert np.array_equal(v, quantize(fake_vector({"text": "row 0"})[None], precision)[0])


# ---- search ---------------------------------------------------------------------------------

def test_flat_and_lancedb_search_find_an_indexed_item_first(tmp_path):
    src, _ = corpus(tmp_path, n=30)
    flat = tmp_path / "flat"
    run_index(src, model="m", out=flat, backend=FakeBackend(), progress=False)
    lance = tmp_path / "lance"
    run_index(src, model="m", out=lance, backend=FakeBackend(), progress=False, store="lancedb")
    assert json.loads((lance / "manifest.json").read_text())["store"]["index"].startswith("none (flat")
    embed = lambda q: fake_vector({k: v for k, v in q.items() if k != "instruction"})  # noqa: E731
    for out in (flat, lance):
        hits = search(out, text="row 12", k=3, embed=embed)
        assert hits[0].id == "r12" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.rank for h in hits] == [1, 2, 3] and hits[0].item == {"text": "row 12"}
    table = format_hits(hits)
    assert table.splitlines()[0].split() == ["rank", "id", "cosine", "item"]


def test_rerank_reorders_by_the_rerankers_score(tmp_path):
    src, _ = corpus(tmp_path, n=10)
    run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(), progress=False)
    embed = lambda q: fake_vector({k: v for k, v in q.items() if k != "instruction"})  # noqa: E731
    seen = {}

    def score(query, docs):
        seen["query"], seen["docs"] = query, docs
        return [float(len(d["text"])) / 100 for d in docs]  # longest text first

    hits = search(tmp_path / "out", text="row 5", k=2, candidates=6, embed=embed, score=score)
    assert seen["query"] == {"text": "row 5"} and len(seen["docs"]) == 6
    assert [h.rerank_score for h in hits] == sorted([len(d["text"]) / 100 for d in seen["docs"]], reverse=True)[:2]
    assert "rerank" in format_hits(hits).splitlines()[0]


def test_search_refuses_unfinished_or_missing_index(tmp_path):
    src, _ = corpus(tmp_path, n=12)
    with pytest.raises(KeyboardInterrupt):
        run_index(src, model="m", out=tmp_path / "out", backend=FakeBackend(crash_after=1),
                  chunk_size=4, progress=False)
    with pytest.raises(JobError, match="unfinished index"):
        search(tmp_path / "out", text="x", embed=fake_vector)
    with pytest.raises(JobError, match="no manifest.json"):
        search(tmp_path, text="x", embed=fake_vector)


def test_lancedb_gets_an_ann_index_from_its_threshold(tmp_path):
    from qwen3vl_vllm.index import store

    n = store.ANN_MIN_ROWS
    rng = np.random.RandomState(0)
    vecs = rng.randn(n, DIM).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = tmp_path / "big"
    (out / "vectors").mkdir(parents=True)
    table = parts.vector_table(list(range(n)), [f"v{i}" for i in range(n)], vecs, [1] * n,
                               [[] for _ in range(n)], ["{}"] * n, "float32")
    import pyarrow.parquet as pq

    pq.write_table(table, out / "vectors" / "part-000000.parquet")
    info = store.build_lancedb(out, log=lambda m: None)
    assert info["index"] == "IVF_HNSW_SQ" and info["rows"] == n
    for i in (0, 17, n - 1):
        assert store.lancedb_search(out, vecs[i], 1)[0][0] == f"v{i}"


# ---- the servers backend over fake transports ------------------------------------------------

def _server(name, calls, *, down=False, refuse=()):
    lock = threading.Lock()

    def handler(request: httpx.Request):
        with lock:
            calls.append(name)
        if down:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})
        body = json.loads(request.content)
        text = body["messages"][1]["content"][0]["text"]
        if text in refuse:
            return httpx.Response(400, json={"error": {"message": "input: refused by the server", "type": "BadRequestError"}})
        emb = base64.b64encode(fake_vector({"text": text}).tobytes()).decode()
        return httpx.Response(200, json={"object": "list", "model": "m", "usage": {"prompt_tokens": 11, "total_tokens": 11},
                                         "data": [{"index": 0, "object": "embedding", "embedding": emb}]})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_servers_backend_spreads_and_survives_a_dead_server(tmp_path):
    calls: list[str] = []
    clients = {"http://a/v1": _server("a", calls), "http://b/v1": _server("b", calls, down=True),
               "http://c/v1": _server("c", calls, refuse={"row 4"})}
    backend = ServersBackend(JobSettings(model="m"), list(clients), concurrency=2, max_retries=0,
                             http_client=lambda u: clients[u])
    src, _ = corpus(tmp_path, n=12)
    s = run_index(src, model="m", out=tmp_path / "out", backend=backend, chunk_size=6, progress=False)
    assert s.vectors + s.errors == 12
    vec = _vectors(tmp_path / "out")
    for rid, v in vec.items():
        i = int(rid[1:])
        assert np.allclose(v, fake_vector({"text": f"row {i}" + (" fail" if i % 7 == 3 else "")}))
    assert {"a", "b", "c"} <= set(calls)  # b was tried and its share went to the others
    errs = _errors(tmp_path / "out")
    assert list(errs) == ["r4"] and "refused by the server" in errs["r4"]
    assert parts.read_columns(tmp_path / "out", "vectors", ["prompt_tokens"]).column(0).to_pylist()[0] == 11


def test_servers_backend_all_down_stops_the_job_to_resume_later(tmp_path):
    calls: list[str] = []
    clients = {"http://a/v1": _server("a", calls, down=True)}
    backend = ServersBackend(JobSettings(model="m"), list(clients), max_retries=0,
                             http_client=lambda u: clients[u])
    src, _ = corpus(tmp_path, n=4)
    with pytest.raises(JobError, match="every server failed .*run the same command again"):
        run_index(src, model="m", out=tmp_path / "out", backend=backend, progress=False)
    assert parts.finished(tmp_path / "out") == {}


def test_servers_arguments_are_checked(tmp_path):
    src, _ = corpus(tmp_path, n=2)
    with pytest.raises(JobError, match="needs at least one URL"):
        run_index(src, model="m", out=tmp_path / "a", backend="servers", progress=False)
    with pytest.raises(JobError, match="--servers was given with the local backend"):
        run_index(src, model="m", out=tmp_path / "b", servers=["http://x/v1"], progress=False)


def test_cli_engine_args_parse_json_values():
    from qwen3vl_vllm.ops.cli import _engine_args, build_parser

    assert _engine_args(["max_model_len=4096", "enforce_eager=true", "kv-cache-dtype=fp8",
                         "hf_overrides={\"a\": 1}"]) == {
        "max_model_len": 4096, "enforce_eager": True, "kv_cache_dtype": "fp8", "hf_overrides": {"a": 1}}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        _engine_args(["max_model_len"])
    args = build_parser().parse_args(["index", "src", "--model", "m", "--out", "o", "--servers",
                                      "http://a/v1,http://b/v1", "--backend", "servers"])
    assert args.servers == ["http://a/v1,http://b/v1"] and args.chunk_size == 256
