"""Request bodies from upstream input dicts (``messages``) and the sync/async HTTP clients
(``embedding``, ``rerank``); no torch, no vLLM."""
