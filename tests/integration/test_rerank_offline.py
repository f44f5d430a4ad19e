"""Offline vLLM (Qwen3VLReranker) vs the transformers reference reranker."""

from __future__ import annotations

from pathlib import Path

import pytest

from cases import rerank_cases, twenty_documents

pytestmark = pytest.mark.slow
TOL = 1e-5  # fp32, tiny checkpoint: measured parity is <= 5e-7


@pytest.mark.parametrize("case", list(rerank_cases(Path("/tmp/qwen3vl-rerank-case-names"))))
def test_offline_rerank_parity(case, offline_rerank, reference_reranker):
    data, media = offline_rerank
    ref = reference_reranker.process(rerank_cases(media)[case])
    got = data["cases"][case]
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        print(f"PARITY rerank offline {case}: reference {r:.7f} vllm {g:.7f} diff {abs(g - r):.2e}")
        assert abs(g - r) <= TOL


def test_offline_twenty_documents_in_one_call(offline_rerank, reference_reranker):
    data, _ = offline_rerank
    ref = reference_reranker.process(twenty_documents())  # 20 single-pair forwards
    assert len(data["twenty"]) == 20
    assert max(abs(a - b) for a, b in zip(data["twenty"], ref, strict=True)) <= TOL


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
