"""Everything vLLM loads in its own processes: ``register()`` (``plugin``), the server-side
settings, checkpoint detection, the contract check of vLLM symbols, the hooks (input strings,
score truncation, video fit), the media connector and video loader, and the ASGI middlewares
(``auth``, ``policy``, ``error_naming``). Importing it has no side effect."""
