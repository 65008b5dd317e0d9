"""The model side: the engine thread, the backends, and the model families the local backend serves.

    api.py        Request, Result, Backend: what the engine thread takes and gives (no torch)
    worker.py     the one engine thread: per-room inboxes, round-robin batches
    backends.py   model.backend -> a Backend: local | openai | salmonn
    families/     one file per model family (a `Family` record), found from a checkpoint's config
    layouts/      prompt layouts: a prompt as the shared audio prefix and each question's suffix
    local/        the local backend: the scoring core, its load-time self-check, loading
    salmonn/      SALMONN's own model (Whisper + BEATs + Q-Former + Vicuna), a family of the local backend
    served*.py    the openai backend: a model served elsewhere, over HTTP (no torch)

Importing this package is cheap; torch and transformers load only when an engine is built.
"""
