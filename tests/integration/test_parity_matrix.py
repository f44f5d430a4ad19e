"""The parity matrix: every case on every path a user takes, against the independent reference.

Rows are cases (tests/cases.py: ``matrix_cases`` / ``rerank_matrix_cases``), columns are paths:

- embedding: offline API, ``EmbeddingClient``, and plain HTTP ``/v1/embeddings`` with
  ``messages`` carrying the *original* media (file bytes as data URLs, original frames, the mp4
  itself with its fps/max_frames as data-URL parameters), built here with no project code;
- reranker: offline API, ``RerankClient``, plain ``/v1/rerank`` and plain ``/score`` with the
  original media (``""`` documents as the empty string, empty ones as ``{"content": []}``).

Bounds (fp32, tiny checkpoint): cosine >= 0.999999 and |score difference| <= 1e-5. A double
resize (~3e-4) or a lost pre-resize fails here. The table is printed (``pytest -s``) and written
as JSON with the run's date, machine and versions to ``$QWEN3VL_PARITY_DIR`` (default
``.cache/parity/``); the docs' parity tables are generated from a committed copy
(``docs/data/parity/``, see ``docs/hooks/figures.py``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cases import matrix_cases, rerank_matrix_cases
from plain_http import plain_embedding_body, plain_side

pytestmark = pytest.mark.slow
COS_BOUND = 0.999999
SCORE_BOUND = 1e-5


# ---- the matrix


@pytest.fixture(scope="session")
def matrix_media(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix")


def _table(title: str, columns: list[str], rows: dict[str, dict[str, float]], fmt: str) -> str:
    lines = [f"PARITY MATRIX {title}", "| case | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(format(cells[c], fmt) if c in cells else "-"
                                                for c in columns) + " |")
    return "\n".join(lines)


def _machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def _record(kind: str, columns: list[str], rows: dict, bound: dict) -> None:
    """The table as JSON, for the docs (written whether or not the bounds held: ``passed``)."""
    import torch
    import vllm

    folder = Path(os.environ.get("QWEN3VL_PARITY_DIR") or Path(__file__).resolve().parents[2] / ".cache" / "parity")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{kind}.json").write_text(json.dumps({
        "kind": kind, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(), "vllm": vllm.__version__, "torch": torch.__version__,
        "checkpoint": "tiny random Qwen3-VL, float32",
        "command": "./launch.sh test -k parity_matrix", "bound": bound,
        "columns": columns, "rows": rows}, indent=1) + "\n")


def test_embedding_parity_matrix(offline_results, embedding_server, reference_embedder, matrix_media):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    data, _, media = offline_results
    offline_cases = matrix_cases(media / "matrix")  # the offline worker's own files
    cases = matrix_cases(matrix_media)
    model = embedding_server.model
    rows: dict[str, dict[str, float]] = {}
    failures = []
    with EmbeddingClient(base_url=embedding_server.base_url) as client, httpx.Client(timeout=300) as http:
        for name, item in cases.items():
            ref = reference_embedder.process([item])[0]
            ref_off = reference_embedder.process([offline_cases[name]])[0]
            cells = {"offline": float(data[f"matrix/{name}"] @ ref_off),
                     "client": float(client.embed([item])[0] @ ref)}
            r = http.post(embedding_server.base_url + "/embeddings", json=plain_embedding_body(model, item))
            if r.status_code != 200:
                failures.append(f"{name} plain HTTP: {r.status_code} {r.text[:300]}")
            else:
                cells["plain HTTP"] = float(np.asarray(r.json()["data"][0]["embedding"], np.float32) @ ref)
            rows[name] = cells
            failures += [f"{name} {col}: cosine {cos:.7f}" for col, cos in cells.items() if cos < COS_BOUND]
    print("\n" + _table("embedding (cosine with the reference)", ["offline", "client", "plain HTTP"],
                        rows, ".7f"))
    _record("embedding", ["offline", "client", "plain HTTP"], rows, {"cosine_min": COS_BOUND})
    assert len(rows) == len(cases) >= 28
    assert not failures, "\n".join(failures)


def _scores(resp: dict, key: str, score: str) -> list[float]:
    items = sorted(resp[key], key=lambda x: x["index"])
    return [float(x[score]) for x in items]


def test_rerank_parity_matrix(offline_rerank, reranker_server, reference_reranker, matrix_media):
    from qwen3vl_vllm import RerankClient

    data, media = offline_rerank
    offline_cases = rerank_matrix_cases(media / "matrix")
    cases = rerank_matrix_cases(matrix_media)
    model = reranker_server.model
    rows: dict[str, dict[str, float]] = {}
    failures = []
    with RerankClient(base_url=reranker_server.base_url) as client, httpx.Client(timeout=300) as http:
        for name, inputs in cases.items():
            ref = reference_reranker.process(inputs)
            ref_off = reference_reranker.process(offline_cases[name])
            fps, mf = inputs.get("fps"), inputs.get("max_frames")
            got = {"offline": data["matrix"][name],
                   "client": client.score(inputs["query"], inputs["documents"],
                                          instruction=inputs.get("instruction"), fps=fps, max_frames=mf)}
            q = plain_side(inputs["query"], fps, mf)
            docs = [plain_side(d, fps, mf) for d in inputs["documents"]]
            extra = {"instruction": inputs["instruction"]} if "instruction" in inputs else {}
            for col, path, body, key, field in (
                    ("plain /rerank", "/v1/rerank", {"query": q, "documents": docs}, "results", "relevance_score"),
                    ("plain /score", "/score", {"queries": q, "documents": docs}, "data", "score")):
                r = http.post(reranker_server.url + path, json={"model": model, **body, **extra})
                if r.status_code != 200:
                    failures.append(f"{name} {col}: {r.status_code} {r.text[:300]}")
                    continue
                got[col] = _scores(r.json(), key, field)
            cells = {}
            for col, scores in got.items():
                expected = ref_off if col == "offline" else ref
                if len(scores) != len(expected):
                    failures.append(f"{name} {col}: {len(scores)} scores for {len(expected)} documents")
                    continue
                cells[col] = max(abs(g - e) for g, e in zip(scores, expected, strict=True))
            rows[name] = {"reference": ref[0], **cells}
            failures += [f"{name} {col}: |diff| {d:.2e}" for col, d in cells.items() if d > SCORE_BOUND]
    print("\n" + _table("reranker (reference score, then max |difference| per path)",
                        ["reference", "offline", "client", "plain /rerank", "plain /score"], rows, ".2e"))
    _record("reranker", ["reference", "offline", "client", "plain /rerank", "plain /score"], rows,
            {"abs_diff_max": SCORE_BOUND})
    assert len(rows) == len(cases) >= 19
    assert not failures, "\n".join(failures)
