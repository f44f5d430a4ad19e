"""The reranker's truncation of over-long pairs (upstream ``Qwen3VLReranker.tokenize``), on ids.

Pure: the offline API applies it to the pair's token ids, the server (``score_truncation``) to
the ids vLLM tokenised. The reference (``reference.py``) has its own copy, written separately.

Example::

    >>> truncate_pair_tokens([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], {1}, 3)
    [1, 2, 3, 6, 7, 8, 9, 10]
"""

from __future__ import annotations

from qwen3vl_vllm.prompts.inputs import RERANK_MAX_LENGTH

RERANK_SUFFIX_TOKENS = 5  # <|im_end|> \n <|im_start|> assistant \n
# The longest reranker prompt: a body cut to RERANK_MAX_LENGTH plus the suffix (upstream rule).
RERANK_MAX_MODEL_LEN = RERANK_MAX_LENGTH + RERANK_SUFFIX_TOKENS


def plain_token_budget(n_tokens: int, n_special: int, max_length: int,
                       suffix: int = RERANK_SUFFIX_TOKENS) -> int | None:
    """How many plain (non-special) body tokens the reranker keeps, or None if nothing is cut.

    Upstream (``Qwen3VLReranker.tokenize``) tokenises the whole pair and cuts its *body* (all but
    the last ``suffix`` tokens) when the body is longer than ``max_length``: every special token
    of the body stays, then the first plain tokens that still fit, then the suffix is put back.
    A cut pair is therefore ``max_length + suffix`` tokens long. ``n_special`` counts the body's
    special tokens, media pads included (after expansion).
    """
    if n_tokens - suffix <= max_length:
        return None
    return max(0, max_length - n_special)


def truncate_pair_tokens(ids: list[int], special_ids: set[int], max_length: int, *,
                         extra_special: int = 0, suffix: int = RERANK_SUFFIX_TOKENS) -> list[int]:
    """Apply the reference's reranker truncation to token ids (see ``plain_token_budget``).

    ``extra_special`` counts special tokens not present in ``ids`` yet (media pads that the
    engine expands later), so the budget is the reference's.
    """
    body, tail = ids[:-suffix], ids[-suffix:]
    n_special = sum(1 for t in body if t in special_ids) + extra_special
    keep = plain_token_budget(len(ids) + extra_special, n_special, max_length, suffix)
    if keep is None:
        return list(ids)
    out = []
    for t in body:
        if t in special_ids:
            out.append(t)
        elif keep > 0:
            out.append(t)
            keep -= 1
    return out + list(tail)
