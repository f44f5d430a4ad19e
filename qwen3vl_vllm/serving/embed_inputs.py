"""Reference prompts for plain ``input`` strings and Cohere ``texts`` on the server (vLLM 0.32).

Why: every embedding library (the openai SDK's ``embeddings.create(input=[...])``, LangChain,
LlamaIndex, Haystack, the Cohere SDK, vLLM's own batch runner) sends bare strings. vLLM 0.32
tokenises those raw: no system turn, no instruction, no generation prompt, so the vector is not
the reference's (cosine -0.18 to 0.12 on the tiny checkpoint). For a detected embedding
checkpoint, ``patch()`` wraps ``EmbedIOProcessor.get_request_factory_online`` (the one place
where vLLM turns an embeddings request into prompts, for ``/v1/embeddings``, ``/v2/embed`` and
``run_batch`` alike) so that each string ``t`` is embedded exactly as the reference embeds
``{"text": t}``: the conversation from ``inputs.embedding_conversation``, rendered by the
package's embedding template (system turn, user turn, generation prompt). A list of N strings
stays one batched request with N vectors in order; ``dimensions``, ``encoding_format`` and
``embed_dtype`` are untouched.

Texts skip vLLM's chat path: with the package's template (and no default template kwargs or
tools), each conversation is rendered directly (``prompts.render.DirectTemplate``, checked once
against ``apply_chat_template``) and handed to vLLM's completion path as the prompt text, with
the chat path's tokenising (no added special tokens; the same length limits and cut). Cohere
requests with images, and servers with a template of their own, keep the chat path.

Instructions without messages:

- ``instruction`` (a request field; ``extra_body`` in the openai SDK) applies the reference's
  punctuation rule to every input of the request. A value that names an instruction configured
  in ``QWEN3VL_INSTRUCTIONS`` (a JSON object; the YAML launcher's ``instructions:``) selects it.
- Cohere ``input_type`` selects the named instruction of that name when one is configured, else
  the default instruction (never vLLM's ``task_instructions`` prefixes).

Token ids cannot carry the reference prompt and get a 400 naming the fix, unless the caller opts
in to pre-built prompts: request field ``"raw_prompt": true``, or ``QWEN3VL_RAW_PROMPTS=1`` for the
whole server; then ``input`` strings and token ids pass through unchanged.

Over-long texts (``truncation``): the reference keeps the first ``max_length`` (8,192) tokens of
the whole prompt, generation prompt included in the cut. A request gets that cut when it asks for
it (vLLM's ``truncate_prompt_tokens``, -1 for ``max_model_len``; the side is the reference's,
keep-the-start, unless ``truncation_side`` says otherwise), when the server is started with
``QWEN3VL_TRUNCATE=1`` (YAML ``server.truncate: true``, for libraries that cannot add a field),
and on Cohere ``/v2/embed`` by its own default ``truncate: END``. ``truncate: START`` (keep the
end) is refused, naming ``END``: the reference never does that. Otherwise an over-long input is a
400 that says how to ask for the cut.

Example (any OpenAI-compatible library)::

    import openai
    sdk = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
    sdk.embeddings.create(model="Qwen/Qwen3-VL-Embedding-2B", input=["a cat", "a dog"],
                          extra_body={"instruction": "Retrieve images of pets"})
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

from qwen3vl_vllm.serving.detect import detect_kind
from qwen3vl_vllm.prompts.inputs import UNICODE_FIX, embedding_conversation, find_bad_text

logger = logging.getLogger("vllm.qwen3vl_vllm")
INSTRUCTIONS_ENV = "QWEN3VL_INSTRUCTIONS"
RAW_ENV = "QWEN3VL_RAW_PROMPTS"
TRUNCATE_ENV = "QWEN3VL_TRUNCATE"
REFERENCE_SIDE = "right"  # the reference keeps the first max_length tokens
START_REFUSED = ("truncate: START keeps the end of the text, which Qwen3-VL-Embedding's reference "
                 "never does (it keeps the first 8192 tokens). Send truncate: END (the default), or "
                 "NONE to be told when a text is too long")
RAW_FIELD = "raw_prompt"
INSTRUCTION_FIELD = "instruction"
_SENTINEL = "_qwen3vl_vllm_embed_inputs"
_DIRECT = "_qwen3vl_vllm_direct_template"  # on an EmbedIOProcessor: its DirectTemplate, or False
TOKEN_IDS_MESSAGE = (
    "input: token ids cannot carry the reference prompt of Qwen3-VL-Embedding (system "
    "instruction, chat turns, generation prompt), so their vector would differ from the "
    "reference. Send the texts as strings. LangChain: OpenAIEmbeddings(..., "
    "check_embedding_ctx_length=False) sends strings instead of token ids. To send a pre-built "
    f"prompt on purpose, add \"{RAW_FIELD}\": true to the request.")


def named_instructions(environ: Any = None) -> dict[str, str]:
    """``QWEN3VL_INSTRUCTIONS`` as a dict (empty when unset); parsed once per value, not per
    request."""
    return dict(_parse_instructions((environ if environ is not None else os.environ)
                                    .get(INSTRUCTIONS_ENV, "")))


@functools.lru_cache(maxsize=8)
def _parse_instructions(raw: str) -> tuple[tuple[str, str], ...]:
    if not raw.strip():
        return ()
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise ValueError(f"{INSTRUCTIONS_ENV} must be a JSON object of name -> instruction text")
    return tuple(data.items())


def resolve_instruction(instruction: Any = None, input_type: str | None = None) -> str | None:
    """The instruction a request asks for: a name or a text, else a Cohere ``input_type``.

    None means the default instruction.
    """
    names = named_instructions()
    if instruction is not None:
        if not isinstance(instruction, str):
            raise ValueError(f"{INSTRUCTION_FIELD}: must be a string (an instruction or one of the "
                             f"configured names {sorted(names)}), got {type(instruction).__name__}")
        return names.get(instruction, instruction)
    if input_type is not None:
        return names.get(input_type)
    return None


def _messages(conversation: list[dict]) -> list[dict]:
    return [{"role": turn["role"], "content": turn["content"]} for turn in conversation]


def check_unicode(value: Any, where: str) -> None:
    """A 400 naming the first text under the request field ``where`` that is not Unicode text
    (a lone surrogate), before the conversations name it by their own numbering."""
    found = find_bad_text(value, where)
    if found:
        raise ValueError(f"{found[0]}: {found[1]}. {UNICODE_FIX}")


def text_conversations(texts: list[str], instruction: str | None) -> list[list[dict]]:
    """One reference conversation per text (``{"text": t, "instruction": ...}``)."""
    out = []
    for i, text in enumerate(texts):
        item = {"text": text} if instruction is None else {"text": text, "instruction": instruction}
        out.append(_messages(embedding_conversation(item, index=i)))
    return out


def server_truncates(environ: Any = None) -> bool:
    """``QWEN3VL_TRUNCATE=1``: over-long inputs get the reference's cut unless a request says
    otherwise."""
    value = (environ if environ is not None else os.environ).get(TRUNCATE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on", "end")


def truncation(tokens: Any, side: Any) -> tuple[Any, Any]:
    """(truncate_prompt_tokens, truncation_side) for an OpenAI-style request: what it asked
    for (on the reference's side unless it named one), else the server's setting."""
    if tokens is not None:
        return tokens, side or REFERENCE_SIDE
    if server_truncates():
        return -1, REFERENCE_SIDE
    return None, side


def cohere_truncation(request: Any) -> tuple[Any, Any]:
    """Cohere's ``truncate``: END (its default) is the reference's cut, NONE none, START refused."""
    mode = (getattr(request, "truncate", None) or "END").upper()
    if mode == "START":
        raise ValueError(START_REFUSED)
    if mode == "NONE":
        return None, None
    limit = getattr(request, "max_tokens", None)
    return (limit if limit is not None else -1), REFERENCE_SIDE


def _raw_requested(request: Any) -> bool:
    extra = getattr(request, "model_extra", None) or {}
    return bool(extra.get(RAW_FIELD)) or os.environ.get(RAW_ENV, "") in ("1", "true", "yes")


def completion_conversations(request: Any) -> list[list[dict]] | None:
    """Conversations for an ``input`` request, or None to leave it to vLLM (raw prompts)."""
    if _raw_requested(request):
        return None
    value = request.input
    texts = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(TOKEN_IDS_MESSAGE)
    check_unicode(value, "input")
    extra = getattr(request, "model_extra", None) or {}
    return text_conversations(texts, resolve_instruction(extra.get(INSTRUCTION_FIELD)))


def cohere_conversations(request: Any) -> list[list[dict]]:
    """Conversations for a Cohere ``/v2/embed`` request: texts, images or mixed inputs, each
    ordered as the reference orders content (images, then texts)."""
    instruction = resolve_instruction(None, request.input_type)
    if request.texts is None and request.images is None and request.inputs is None:
        raise ValueError("One of texts, images, or inputs must be provided")
    check_unicode(request.texts, "texts")
    for k, inp in enumerate(request.inputs or []):
        for j, part in enumerate(inp.content):
            if part.type == "text":
                check_unicode(part.text, f"inputs[{k}].content[{j}].text")
    if request.texts is not None and request.images is None and request.inputs is None:
        return text_conversations(list(request.texts), instruction)
    items: list[dict] = []
    for uri in request.images or []:
        items.append({"images": [uri], "texts": []})
    for inp in request.inputs or []:
        items.append({"images": [c.image_url["url"] for c in inp.content
                                 if c.type == "image_url" and c.image_url],
                      "texts": [c.text for c in inp.content if c.type == "text" and c.text is not None]})
    if request.texts is not None:
        items += [{"images": [], "texts": [t]} for t in request.texts]
    out = []
    for i, it in enumerate(items):
        # the conversation (instruction rule, NULL rule) comes from the one prompt module; the
        # images travel as the URLs the caller sent, before the texts as in the reference
        item = {"text": it["texts"]}
        if instruction is not None:
            item["instruction"] = instruction
        system, user = embedding_conversation(item, index=i)
        images = [{"type": "image_url", "image_url": {"url": u}} for u in it["images"]]
        content = images + (user["content"] if it["texts"] else []) or user["content"]
        out.append([system, {"role": "user", "content": content}])
    return out


def _is_embedding(processor: Any) -> bool:
    cached = getattr(processor, _SENTINEL, None)
    if cached is None:
        cached = detect_kind(getattr(processor.model_config, "model", None)) == "embedding"
        setattr(processor, _SENTINEL, cached)
    return cached


def _direct_template(processor: Any) -> Any:
    """The server's embedding template rendered directly (``prompts.render``), or None where
    only vLLM's chat path renders exactly what the server would: a template of the user's own
    (its content format may differ), default template kwargs or tools, a non-HF tokenizer."""
    cached = getattr(processor, _DIRECT, None)
    if cached is None:
        from qwen3vl_vllm.prompts.engine import chat_template_text
        from qwen3vl_vllm.prompts.render import DirectTemplate

        tokenizer = getattr(getattr(processor, "renderer", None), "tokenizer", None)
        cached = False
        if (getattr(processor, "chat_template", None) == chat_template_text("embedding")
                and not getattr(processor, "template_kwargs", None) and not getattr(processor, "tool_dicts", None)
                and hasattr(tokenizer, "apply_chat_template") and hasattr(tokenizer, "special_tokens_map")):
            cached = DirectTemplate(tokenizer, processor.chat_template, check="once")
            logger.info("qwen3vl-vllm: text inputs rendered directly from the embedding template")
        setattr(processor, _DIRECT, cached)
    return cached if cached and cached.direct else None


def _render_texts(processor: Any, ctx: Any, conversations: list, truncate: Any, side: Any, original: Any):
    """Text-only conversations: the template's output tokenised as vLLM's completion path
    tokenises a prompt (the chat path's tokenising: no added special tokens, the same length
    limits and cut), skipping its message parsing (2.52 against 2.68 ms of API server CPU per
    short text at c = 8, ``benchmarks/text_paths.py``). Falls back to the chat path where the direct render can't
    stand in for it."""
    template = _direct_template(processor)
    if template is None:
        return _render(processor, ctx, conversations, truncate, side)
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest

    request = ctx.request
    proxy = EmbeddingCompletionRequest(model=request.model, input=template.render(conversations),
                                       add_special_tokens=False, encoding_format="float",
                                       truncate_prompt_tokens=truncate, truncation_side=side)
    ctx.request = proxy
    try:
        return original(processor, ctx)
    finally:
        ctx.request = request


def _render(processor: Any, ctx: Any, conversations: list, truncate: Any, side: Any):
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingBatchChatRequest

    request = ctx.request
    proxy = EmbeddingBatchChatRequest(model=request.model, messages=conversations,
                                      add_generation_prompt=True, encoding_format="float",
                                      truncate_prompt_tokens=truncate, truncation_side=side)
    ctx.request = proxy
    try:
        return processor._get_request_factory_chat_input_online(ctx)
    finally:
        ctx.request = request


def patch() -> str | None:
    """Wrap ``EmbedIOProcessor.get_request_factory_online`` once; returns what was patched."""
    from vllm.entrypoints.pooling.embed.io_processor import EmbedIOProcessor
    from vllm.entrypoints.pooling.embed.protocol import CohereEmbedRequest, EmbeddingCompletionRequest

    original = EmbedIOProcessor.get_request_factory_online
    if getattr(original, _SENTINEL, False):
        return None

    def get_request_factory_online(self, ctx):
        request = ctx.request
        if _is_embedding(self):
            if isinstance(request, CohereEmbedRequest):
                truncate, side = cohere_truncation(request)
                conversations = cohere_conversations(request)
                if request.images is None and request.inputs is None:  # texts only
                    return _render_texts(self, ctx, conversations, truncate, side, original)
                return _render(self, ctx, conversations, truncate, side)
            truncate, side = truncation(getattr(request, "truncate_prompt_tokens", None),
                                        getattr(request, "truncation_side", None))
            if isinstance(request, EmbeddingCompletionRequest):
                conversations = completion_conversations(request)
                if conversations is not None:
                    return _render_texts(self, ctx, conversations, truncate, side, original)
            if hasattr(request, "truncate_prompt_tokens"):  # messages (and raw prompts)
                request.truncate_prompt_tokens, request.truncation_side = truncate, side
        return original(self, ctx)

    setattr(get_request_factory_online, _SENTINEL, True)
    get_request_factory_online.__wrapped__ = original
    EmbedIOProcessor.get_request_factory_online = get_request_factory_online
    return "EmbedIOProcessor.get_request_factory_online"
