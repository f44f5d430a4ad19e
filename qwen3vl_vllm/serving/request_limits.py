"""What one request may ask the server to do: items, text per item, text per request. Pure.

vLLM bounds none of these, and each one lets a small body cost minutes or gigabytes:

- **items** (``QWEN3VL_MAX_ITEMS_PER_REQUEST``, default 2,048, OpenAI's own cap on an embeddings
  ``input`` array): vLLM makes every element of a list a prompt of its own. 20,000 one-word
  texts in one 100 KB body kept a tiny server busy 10 s, and a 64 MiB body holds ~13 million.
- **characters in one text** (``QWEN3VL_MAX_TEXT_CHARS``, default 4 Mi = 4,194,304): vLLM
  tokenises a reranker's document and a ``/tokenize`` prompt whole, whatever its length (an
  embedding input it cuts to ``max_model_len`` × the longest token first). On a tiny server
  (measured, 2 cores, ``benchmarks/text_limits.py``): a 3 M-character document took 3.2 s and
  +635 MB, a 20 M-character ``/tokenize`` prompt 32 s and +4 GB. The models read at most 8,192
  (embedding) or 10,240 (reranker) tokens, so a text of 4 Mi characters is cut by the
  reference anyway unless its tokens average over 400 characters. A list of token ids counts
  one per id.
- **characters in one request** (``QWEN3VL_MAX_REQUEST_TEXT_CHARS``, default 16 Mi =
  16,777,216): a rerank or score request pairs its query with every document, and each pair is
  tokenised whole, so a query is tokenised once per document. A 300,000-character query with
  40 short documents took 9.2 s on the tiny server, and a small request sent behind it waited
  8.2 s (vLLM tokenises on one thread): with 2,048 documents, ~8 minutes from a 300 KB body.
  So a request's texts are counted with its query once per document. 16 Mi characters is ~4
  million tokens of English, 14x the 300,000 tokens OpenAI allows in one embeddings request:
  any batch an OpenAI client sends passes.

Only texts are counted: the strings of ``input``, ``prompt``, ``texts``, the query and document
fields, and the ``text``/``content`` of parts and messages (never an image or video URL).

Example::

    >>> text_problem({"query": "q" * 10, "documents": ["a", "b", "c"]}, max_text=0, max_total=30)[:78]
    'query: 10 characters, tokenised once per document (3 documents): 33 characters'
"""

from __future__ import annotations

import os

MAX_ITEMS_ENV = "QWEN3VL_MAX_ITEMS_PER_REQUEST"
DEFAULT_MAX_ITEMS = 2048  # OpenAI's cap on an embeddings `input` array; TEI's default is 32
MAX_TEXT_ENV = "QWEN3VL_MAX_TEXT_CHARS"
DEFAULT_MAX_TEXT_CHARS = 4 * 1024 * 1024  # > 400 characters a token for the reranker's 10,240
MAX_REQUEST_TEXT_ENV = "QWEN3VL_MAX_REQUEST_TEXT_CHARS"
DEFAULT_MAX_REQUEST_TEXT_CHARS = 16 * 1024 * 1024  # ~4 M tokens; OpenAI: 300,000 per request

# the two sides of a scoring request (rerank, score, Cohere rerank; vLLM 0.32's field names)
QUERY_FIELDS = ("query", "queries", "text_1", "data_1")
DOC_FIELDS = ("documents", "items", "text_2", "data_2")
# the request fields whose list elements each become a prompt (or a document, or a pair):
# OpenAI `input`, Cohere `texts`/`images`/`inputs`, and both sides of a scoring request
ITEM_FIELDS = ("input", "texts", "images", "inputs") + QUERY_FIELDS + DOC_FIELDS
# the fields whose strings are texts the server tokenises (`prompt`, `tokens`: /tokenize,
# /detokenize, completions-style pooling)
TEXT_FIELDS = ("input", "prompt", "tokens", "texts", "inputs", "messages") + QUERY_FIELDS + DOC_FIELDS
_TEXT_KEYS = ("text", "content", "prompt")  # where a part, message or document holds its text


def env_limit(environ, name: str, default: int, unit: str) -> int:
    """A whole-number limit from the environment (``default`` when unset; 0 = none); a bad or
    negative value is refused by name."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    try:
        value = default if raw == "" else int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={raw!r}: use a whole number of {unit}, e.g. {default}, or 0 "
                         "for no limit")
    return value


def max_items(environ=None) -> int:
    """The item limit in force: ``QWEN3VL_MAX_ITEMS_PER_REQUEST``, else the default; 0 = none."""
    return env_limit(environ, MAX_ITEMS_ENV, DEFAULT_MAX_ITEMS, "items per request")


def max_text_chars(environ=None) -> int:
    """Characters in one text: ``QWEN3VL_MAX_TEXT_CHARS``, else the default; 0 = none."""
    return env_limit(environ, MAX_TEXT_ENV, DEFAULT_MAX_TEXT_CHARS, "characters per text")


def max_request_text_chars(environ=None) -> int:
    """Characters tokenised for one request: ``QWEN3VL_MAX_REQUEST_TEXT_CHARS``, else the
    default; 0 = none."""
    return env_limit(environ, MAX_REQUEST_TEXT_ENV, DEFAULT_MAX_REQUEST_TEXT_CHARS,
                  "characters per request")


def _is_ids(value) -> bool:
    return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _count(value) -> int:
    """Prompts in one item field: a list of token ids is one prompt; any other list is one
    per element; a single value is one."""
    if not isinstance(value, list):
        return 1
    return 1 if _is_ids(value) else len(value)


def item_counts(data) -> dict[str, int]:
    """How many items each field of a request body carries: ``ITEM_FIELDS`` that hold lists,
    and the content parts of the ``messages`` (``messages[*].content``, summed; a message whose
    content is one string, or none, is one part: the template renders every message)."""
    if not isinstance(data, dict):
        return {}
    counts = {f: _count(data[f]) for f in ITEM_FIELDS if isinstance(data.get(f), list)}
    messages = data.get("messages")
    if isinstance(messages, list):
        parts = sum(len(m["content"]) if isinstance(m, dict) and isinstance(m.get("content"), list) else 1
                    for m in messages)
        if parts:
            counts["messages"] = parts
    return counts


def items_problem(data, limit: int) -> str | None:
    """The 400 message for a body with more than ``limit`` items in one field, else None."""
    for field, n in item_counts(data).items():
        if n > limit:
            what = "content parts" if field == "messages" else "items"
            return (f"{field}: {n} {what} in one request, above this server's limit of {limit}. "
                    f"Send at most {limit} per request (several requests in parallel are fine), "
                    f"or raise {MAX_ITEMS_ENV}")
    return None


def texts(value, where: str):
    """Yield ``(where, size, unit)`` for each text in a field's value: a string (characters), a
    list of token ids (ids), and the texts held under ``text``/``content``/``prompt`` of its
    parts, messages and documents. Image, video and audio fields are never entered."""
    if isinstance(value, str):
        yield where, len(value), "characters"
    elif isinstance(value, list):
        if _is_ids(value):
            yield where, len(value), "token ids"
            return
        for i, v in enumerate(value):
            yield from texts(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key in _TEXT_KEYS:
            if key in value:
                yield from texts(value[key], f"{where}.{key}")


def _side_items(value) -> int:
    """Items on one side of a scoring request: one per list element, else one."""
    return len(value) if isinstance(value, list) and not _is_ids(value) else 1


def text_problem(data, *, max_text: int, max_total: int) -> str | None:
    """The 400 message for a body with a text over ``max_text`` or more than ``max_total``
    characters in all (a scoring request's single query counted once per document), else
    None. A limit of 0 is off."""
    if not isinstance(data, dict):
        return None
    total = 0
    by_field = {}
    for field in TEXT_FIELDS:
        if field not in data:
            continue
        for where, n, unit in texts(data[field], field):
            if max_text and n > max_text:
                return (f"{where}: {n} {unit} in one text, above this server's limit of {max_text}. "
                        "The models read at most the first 8,192 (embedding) or 10,240 (reranker) "
                        f"tokens of a text: send that part, or raise {MAX_TEXT_ENV}")
            total += n
            by_field[field] = by_field.get(field, 0) + n
    if not max_total:
        return None
    query_field = next((f for f in QUERY_FIELDS if f in data), None)
    doc_field = next((f for f in DOC_FIELDS if f in data), None)
    if query_field is not None and doc_field is not None:
        query_chars = by_field.get(query_field, 0)
        n_docs = _side_items(data[doc_field])
        if _side_items(data[query_field]) == 1 and n_docs > 1:  # one query paired with every document
            repeats = query_chars * (n_docs - 1)
            if total + repeats > max_total:
                return (f"{query_field}: {query_chars} characters, tokenised once per document "
                        f"({n_docs} documents): {total + repeats} characters for this request, "
                        f"above this server's limit of {max_total}. Send fewer documents per "
                        f"request or a shorter query, or raise {MAX_REQUEST_TEXT_ENV}")
    if total > max_total:
        return (f"request: {total} characters of text, above this server's limit of {max_total}. "
                f"Send fewer or shorter texts per request, or raise {MAX_REQUEST_TEXT_ENV}")
    return None
