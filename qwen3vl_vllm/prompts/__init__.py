"""The reference's rules, pure (no I/O, no torch, no vLLM): input dicts to conversations, the
instruction and NULL rules, frame sampling, the reranker's truncation, the video-fit rule and
its report channel, the chat templates, and the engine settings per kind that reproduce the
reference on vLLM (``engine``)."""
