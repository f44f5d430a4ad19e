"""The checkpoint builder is deterministic for a seed and its tokenizer has the Qwen specials."""

import hashlib

import pytest

from qwen3vl_vllm.testing.checkpoint import SPECIAL_TOKENS, build_checkpoint


def _digest(path):
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest()
            for name in ("model.safetensors", "tokenizer.json", "config.json")}


@pytest.mark.slow
def test_deterministic_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    a = build_checkpoint(tmp_path / "Qwen3-VL-Embedding-a", kind="embedding", seed=3)
    b = build_checkpoint(tmp_path / "Qwen3-VL-Embedding-b", kind="embedding", seed=3)
    c = build_checkpoint(tmp_path / "Qwen3-VL-Embedding-c", kind="embedding", seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]
    tok = AutoTokenizer.from_pretrained(a)
    assert len(tok.encode("yes", add_special_tokens=False)) == 1
    assert len(tok.encode("no", add_special_tokens=False)) == 1
    for special in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert len(tok.encode(special, add_special_tokens=False)) == 1
