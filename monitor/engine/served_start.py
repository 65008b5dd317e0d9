"""What the `openai` backend asks a server once, at start: does it serve `model.name`, which tokens are yes/no.

Each failure is one `ModelLoadError` line naming the setting to fix (the URL, the key, the CA, the
served name) or what the server lacks. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging

from monitor.engine.errors import ModelLoadError
from monitor.engine.served_client import ServedClient, ServerError
from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0  # seconds per request at start: a fresh vLLM warms up on its first requests
WORDS = ("yes", "no")
# What may come before the word inside one token and still read as the bare word once stripped
# (the local engine's rule: the token's text, stripped and lower-cased, is "yes" or "no").
PREFIXES = ("", " ", "\t", "\u00a0", "\u3000")


def casings(word: str) -> list[str]:
    """Every upper/lower-case spelling of a word: yes, yeS, ..., YES."""
    return sorted({"".join(chars) for chars in itertools.product(*[(c.lower(), c.upper()) for c in word])})


def check_served(client: ServedClient, settings: ModelSettings) -> None:
    """The server answers and serves `model.name`; else one line saying which is wrong."""
    try:
        listing = client.get("/v1/models", timeout=max(settings.timeout, 10.0), guard=False)
    except ServerError as exc:
        if exc.status in (401, 403):
            raise ModelLoadError(f"model.url {client.where} refused the API key ({exc}): check model.api_key_file / "
                                 "model.api_key_env against the server's --api-key") from None
        if "CERTIFICATE" in str(exc).upper():
            raise ModelLoadError(f"model.url: {exc}; set model.ca_file to the CA that signed the server's "
                                 "certificate") from None
        raise ModelLoadError(f"model.url: {exc}; start the model server (docs/served.md) or fix model.url") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    names = sorted(str(m.get("id")) for m in data or [] if isinstance(m, dict))
    if settings.name not in names:
        raise ModelLoadError(f"model.name {settings.name} is not served at {client.where}, which serves "
                             f"{', '.join(names) or 'no model'}: set model.name to one of them")


def answer_ids(client: ServedClient, settings: ModelSettings,
                pool: cf.ThreadPoolExecutor) -> tuple[list[int], list[int]] | None:
    """The yes and no token ids of the served tokenizer, or None when the server has no /tokenize.

    Every spelling of the words (casing, a leading space or other blank) is tokenized; those that
    are one token are the answer tokens, as `monitor.engine.local.answers.yes_no_token_ids` finds them in a local vocabulary.
    """
    candidates = [(word, prefix + spelling) for word in WORDS for spelling in casings(word) for prefix in PREFIXES]

    def tokens(text: str) -> list[int]:
        body = {"model": settings.name, "prompt": text, "add_special_tokens": False}
        return list(client.post("/tokenize", body, timeout=LOAD_TIMEOUT, guard=False).get("tokens") or [])

    try:
        found = list(pool.map(tokens, [text for _, text in candidates]))
    except ServerError as exc:
        if exc.status in (404, 405):
            log.info("model server %s has no /tokenize (not vLLM?): yes/no answers are matched by their text",
                     client.where)
            return None
        raise ModelLoadError(f"model.url {client.where}: cannot tokenize the answers ({exc})") from None
    ids: dict[str, set[int]] = {word: set() for word in WORDS}
    for (word, _), got in zip(candidates, found, strict=True):
        if len(got) == 1:
            ids[word].add(int(got[0]))
    if not ids["yes"] or not ids["no"] or ids["yes"] & ids["no"]:
        raise ModelLoadError(f"model.name {settings.name} at {client.where} has no single-token Yes/No answers: "
                             "yes/no questions cannot be scored with it")
    return sorted(ids["yes"]), sorted(ids["no"])
