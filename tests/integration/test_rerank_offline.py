"""Offline vLLM (Qwen3VLReranker) vs the transformers reference reranker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cases import rerank_cases, twenty_documents

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
TOL = 1e-4


@pytest.fixture(scope="session")
def offline_rerank(reranker_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline-rerank")
    out = tmp / "results.json"
    proc = subprocess.run([sys.executable, str(HERE / "offline_rerank_worker.py"), str(reranker_ckpt),
                           str(out), str(tmp / "media")], capture_output=True, text=True, timeout=900)
    assert out.exists(), f"worker wrote nothing (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), tmp / "media"


@pytest.mark.parametrize("case", list(rerank_cases(Path("/tmp/qwen3vl-rerank-case-names"))))
def test_offline_rerank_parity(case, offline_rerank, reference_reranker):
    data, media = offline_rerank
    ref = reference_reranker.process(rerank_cases(media)[case])
    got = data["cases"][case]
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        print(f"PARITY rerank offline {case}: reference {r:.7f} vllm {g:.7f} diff {abs(g - r):.2e}")
        assert abs(g - r) <= TOL


def test_offline_twenty_documents_in_one_call(offline_rerank, reference_reranker):
    data, _ = offline_rerank
    ref = reference_reranker.process(twenty_documents())  # 20 single-pair forwards
    assert len(data["twenty"]) == 20
    assert max(abs(a - b) for a, b in zip(data["twenty"], ref)) <= TOL


def test_offline_prompt_is_reference_order(offline_rerank):
    data, _ = offline_rerank
    prompt = data["prompt_order"]
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<Query>:q\n<Document>:<|vision_start|><|image_pad|><|vision_end|>t<|im_end|>" in prompt


def test_offline_bad_document_named(offline_rerank):
    data, _ = offline_rerank
    assert data["errors"]["bad_doc"].startswith("MediaError: documents[1].image[0]")
    assert data["errors"]["empty_docs"].startswith("InputError: documents")
    # a bad query image is named as the query, not as a document
    assert data["errors"]["bad_query"].startswith("MediaError: query.image[0]")
