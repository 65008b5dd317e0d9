"""The Hugging Face hub and its cache, as a model loader meets them: offline mode, and one line per failure.

A daemon that cannot find its model must say what to do (pre-download the weights, point HF_HOME
at them, or set the path setting), not show a traceback from deep inside the hub client. Shared
by the transformers loader (`local.loading`) and SALMONN's parts (`salmonn.model`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from monitor.engine.errors import first_line

log = logging.getLogger(__name__)


def hf_home() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HOME)
    except Exception:  # noqa: BLE001 - only used to word a message
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def describe_hub_failure(model_id: str, exc: BaseException) -> str:
    """One line for a failure to get `model_id` from the cache or the hub."""
    from huggingface_hub import errors

    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, errors.GatedRepoError) for e in chain):
        return (f"model.id {model_id} is gated on the Hugging Face hub: accept its licence on huggingface.co and "
                "log in with `hf auth login`, or set model.path to a folder holding the model")
    if any(isinstance(e, errors.RepositoryNotFoundError) for e in chain):
        return (f"model.id {model_id} was not found on the Hugging Face hub: check the spelling "
                "(e.g. Qwen/Qwen2-Audio-7B-Instruct), or set model.path to a folder holding the model")
    if any(isinstance(e, errors.RevisionNotFoundError) for e in chain):
        return f"model.revision of {model_id} does not exist on the hub: fix model.revision or set it to null"
    where = "offline mode is on (HF_HUB_OFFLINE)" if offline() else "the hub cannot be reached"
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError", "ConnectionError"} \
            or "couldn't connect" in str(exc) or "local cache" in str(exc):
        return (f"model {model_id} is not in the Hugging Face cache ({hf_home()}) and {where}: on a connected "
                f"machine run `hf download {model_id}` (older clients: `huggingface-cli download {model_id}`) and "
                "copy the cache here or point HF_HOME at it, or set model.path to a folder holding the model")
    return f"model {model_id} could not be loaded ({first_line(exc)}): set model.path to a folder holding the model"


@contextlib.contextmanager
def quiet_hub_retries(active: bool) -> Iterator[None]:
    """Hide the hub client's per-retry warnings while it looks for a model that is not cached.

    Unreachable, it retries with backoff and warns each time; the outcome is reported as one line.
    """
    hub_log = logging.getLogger("huggingface_hub")
    previous = hub_log.level
    if active:
        log.info("looking for the model on the Hugging Face hub (this can take ~30 s when it is unreachable)")
        hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(previous)
