"""A chat template compiled once and rendered directly, checked against ``apply_chat_template``.

Why: ``tokenizer.apply_chat_template`` compiles (cached) and renders the template, but its
argument handling costs ~60 us a prompt; vLLM's chat path adds message parsing, the content
format rules and its multimodal tracker on top (``benchmarks/text_paths.py``, c = 8: 2.52 ms
of API server CPU per short text rendered here against 2.68 ms through the chat path). For a
conversation of text parts the prompt is just the template's output, so the offline API and the
server's ``input`` strings render it here.

The direct render uses transformers' own compiler and sandbox (``_compile_jinja_template``) with
the arguments ``apply_chat_template`` passes (the messages, ``add_generation_prompt`` and the
tokenizer's special tokens). It is checked against ``apply_chat_template`` on the first
conversation of a call (``check="every"``) or of the object's life (``"once"``); where they
ever differ, or transformers lacks the compiler, every later render goes through
``apply_chat_template`` and ``direct`` turns False.

Example::

    from transformers import AutoTokenizer
    from qwen3vl_vllm.prompts.engine import chat_template_text
    from qwen3vl_vllm.prompts.inputs import embedding_conversation
    tok = AutoTokenizer.from_pretrained("Qwen/Qwen3-VL-Embedding-2B")
    t = DirectTemplate(tok, chat_template_text("embedding"))
    t.render([embedding_conversation({"text": "a cat"})])   # -> ["<|im_start|>system\\n..."]
"""

from __future__ import annotations

from typing import Any


class DirectTemplate:
    """``template`` (None: the tokenizer's own) rendered for conversations, with no tokenising."""

    def __init__(self, tokenizer: Any, template: str | None = None, *, check: str = "every"):
        if check not in ("every", "once"):
            raise ValueError(f"check must be 'every' or 'once', got {check!r}")
        self.tokenizer, self.template, self.check = tokenizer, template, check
        self._special = dict(getattr(tokenizer, "special_tokens_map", None) or {})
        self._checked = False
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self._compiled = _compile_jinja_template(template or tokenizer.chat_template)
        except Exception:  # noqa: BLE001 - a transformers without it: the public path
            self._compiled = None

    @property
    def direct(self) -> bool:
        """Whether renders go through the compiled template (False after a mismatch)."""
        return self._compiled is not None

    def reference(self, conversation: list[dict]) -> str:
        """What ``apply_chat_template`` renders for one conversation."""
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=True)

    def render(self, conversations: list[list[dict]]) -> list[str]:
        """The prompt text of each conversation, in order."""
        if not conversations:
            return []
        if self._compiled is not None:
            texts = [self._compiled.render(messages=c, add_generation_prompt=True, **self._special)
                     for c in conversations]
            if self.check == "every" or not self._checked:
                if texts[0] != self.reference(conversations[0]):
                    self._compiled = None  # never again for this template
                    return [self.reference(c) for c in conversations]
                self._checked = True
            return texts
        return [self.reference(c) for c in conversations]
