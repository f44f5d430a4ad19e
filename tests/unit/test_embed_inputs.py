"""Input strings / Cohere texts -> reference conversations, with fake requests (no server)."""

from __future__ import annotations

import json
import types

import pytest

from qwen3vl_vllm.serving import embed_inputs as E
from qwen3vl_vllm.testing import reference as R

NAMED = {"query": "Find the passage that answers the question", "doc": "Represent the document"}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(E.INSTRUCTIONS_ENV, json.dumps(NAMED))
    monkeypatch.delenv(E.RAW_ENV, raising=False)


def _req(input, **extra):
    return types.SimpleNamespace(input=input, model_extra=extra)


def _canon(conv):
    return [(t["role"], [dict(p) for p in t["content"]]) for t in conv]


@pytest.mark.parametrize("texts", [["a cat"], ["", "  ", "查找"], ["x\ny", "NULL"]])
@pytest.mark.parametrize("instruction,expected", [
    (None, None), ("Find cats", "Find cats"), ("query", NAMED["query"]), ("doc", NAMED["doc"]),
    ("", ""), ("  spaced  ", "  spaced  ")])
def test_input_strings_are_the_reference_conversation(texts, instruction, expected):
    extra = {} if instruction is None else {"instruction": instruction}
    got = E.completion_conversations(_req(texts, **extra))
    want = [R.embedding_conversation({"text": t} if expected is None
                                     else {"text": t, "instruction": expected}) for t in texts]
    assert [_canon(c) for c in got] == [_canon(c) for c in want]


def test_single_string_is_one_conversation():
    got = E.completion_conversations(_req("a cat"))
    assert len(got) == 1 and got[0][1]["content"] == [{"type": "text", "text": "a cat"}]
    assert got[0][0]["content"][0]["text"] == "Represent the user's input."


@pytest.mark.parametrize("ids", [[1, 2, 3], [[1, 2], [3]]])
def test_token_ids_are_refused_with_the_fix(ids):
    with pytest.raises(ValueError) as err:
        E.completion_conversations(_req(ids))
    assert "check_embedding_ctx_length=False" in str(err.value) and E.RAW_FIELD in str(err.value)


def test_raw_prompt_opt_in(monkeypatch):
    assert E.completion_conversations(_req([[1, 2, 3]], raw_prompt=True)) is None
    assert E.completion_conversations(_req("<|im_start|>...", raw_prompt=True)) is None
    monkeypatch.setenv(E.RAW_ENV, "1")
    assert E.completion_conversations(_req([1, 2])) is None


def test_instruction_must_be_a_string():
    with pytest.raises(ValueError, match="instruction: must be a string.*query"):
        E.completion_conversations(_req(["x"], instruction=3))


def test_bad_named_instructions_env(monkeypatch):
    monkeypatch.setenv(E.INSTRUCTIONS_ENV, '["not", "a mapping"]')
    with pytest.raises(ValueError, match=E.INSTRUCTIONS_ENV):
        E.named_instructions()


def _cohere(texts=None, images=None, inputs=None, input_type=None):
    return types.SimpleNamespace(texts=texts, images=images, inputs=inputs, input_type=input_type)


def _content(kind, value):
    return types.SimpleNamespace(type=kind, text=value if kind == "text" else None,
                                 image_url={"url": value} if kind == "image_url" else None)


def test_cohere_input_type_maps_to_named_or_default():
    named = E.cohere_conversations(_cohere(texts=["q"], input_type="query"))
    assert named[0][0]["content"][0]["text"] == NAMED["query"] + "."
    default = E.cohere_conversations(_cohere(texts=["q"], input_type="search_query"))
    assert default[0][0]["content"][0]["text"] == "Represent the user's input."


def test_cohere_mixed_inputs_put_images_before_texts():
    inp = types.SimpleNamespace(content=[_content("text", "caption"), _content("image_url", "data:x")])
    conv = E.cohere_conversations(_cohere(inputs=[inp], images=["data:y"]))
    assert conv[0][1]["content"] == [{"type": "image_url", "image_url": {"url": "data:y"}}]
    assert conv[1][1]["content"] == [{"type": "image_url", "image_url": {"url": "data:x"}},
                                     {"type": "text", "text": "caption"}]
    empty = E.cohere_conversations(_cohere(inputs=[types.SimpleNamespace(content=[])]))
    assert empty[0][1]["content"] == [{"type": "text", "text": "NULL"}]
    with pytest.raises(ValueError, match="One of texts, images, or inputs"):
        E.cohere_conversations(_cohere())


def test_patch_is_idempotent_and_marked():
    from vllm.entrypoints.pooling.embed.io_processor import EmbedIOProcessor

    E.patch()
    first = EmbedIOProcessor.get_request_factory_online
    assert E.patch() is None and EmbedIOProcessor.get_request_factory_online is first
    assert getattr(first, E._SENTINEL)


def test_config_instructions_reach_the_server_env(tmp_path):
    from qwen3vl_vllm.ops.config import ConfigError, load_config
    from qwen3vl_vllm.ops.launcher import dry_run_command, server_env

    cfg = load_config(None, data={"model": "m", "kind": "embedding", "instructions": NAMED,
                                  "server": {"raw_prompts": True}})
    env = server_env(cfg, base={})
    assert json.loads(env[E.INSTRUCTIONS_ENV]) == NAMED and env[E.RAW_ENV] == "1"
    assert E.INSTRUCTIONS_ENV in dry_run_command(cfg, "m")
    with pytest.raises(ConfigError, match="instructions.query: must not be empty"):
        load_config(None, data={"model": "m", "instructions": {"query": " "}})
    with pytest.raises(ConfigError, match="instructions.query: expected string"):
        load_config(None, data={"model": "m", "instructions": {"query": 3}})
    with pytest.raises(ConfigError, match="instructions: expected mapping"):
        load_config(None, data={"model": "m", "instructions": ["a"]})


def test_truncation_follows_the_request_then_the_server(monkeypatch):
    import types

    from qwen3vl_vllm.serving import embed_inputs as E

    monkeypatch.delenv(E.TRUNCATE_ENV, raising=False)
    assert E.truncation(None, None) == (None, None)           # default: over-long -> 400
    assert E.truncation(-1, None) == (-1, "right")             # asked: the reference's side
    assert E.truncation(100, "left") == (100, "left")          # the caller's own side wins
    monkeypatch.setenv(E.TRUNCATE_ENV, "1")
    assert E.truncation(None, None) == (-1, "right")           # the server's setting
    cohere = lambda t, m=None: types.SimpleNamespace(truncate=t, max_tokens=m)  # noqa: E731
    assert E.cohere_truncation(cohere("END")) == (-1, "right")
    assert E.cohere_truncation(cohere(None)) == (-1, "right")  # Cohere's default is END
    assert E.cohere_truncation(cohere("END", 500)) == (500, "right")
    assert E.cohere_truncation(cohere("NONE")) == (None, None)
    with pytest.raises(ValueError, match="Send truncate: END"):
        E.cohere_truncation(cohere("START"))
