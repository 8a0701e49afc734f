"""Who is asking: the owner identity of a browser, an API client or a logged-in user, and the
network address that rate limits count against.

Identities: `hf:<user>` for a user logged in with Hugging Face on a Space; else the random
token a browser keeps in its local storage (API clients send their own). A caller with neither
owns nothing: when it starts a run, the run gets a fresh token as its owner, given back in the
answer. Runs keep only a hash of the identity (`runs.owner_key`).
"""

from __future__ import annotations

import os
import re
import secrets

import gradio as gr

# tokens are what browsers and API clients send: short, and never containing ':' (the prefix
# separator of user identities, so no token can pose as a logged-in user)
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def new_owner_token() -> str:
    """An unguessable id for one browser, kept in its local storage."""
    return secrets.token_urlsafe(16)


def valid_token(token) -> str | None:
    return token if isinstance(token, str) and TOKEN_PATTERN.fullmatch(token) else None


def owner_of(token, profile: gr.OAuthProfile | None = None) -> str | None:
    """The identity of a caller, or None when it has none (see the module docstring)."""
    username = getattr(profile, "username", None)
    if isinstance(username, str) and username:
        return f"hf:{username}"
    return valid_token(token)


def client_address(request) -> str | None:
    """The network address of a request (a gr.Request or a Starlette request). Behind a Hugging
    Face Space's proxy (SPACE_ID set), the first address of X-Forwarded-For, which the proxy
    sets; elsewhere the connection's own address."""
    if request is None:
        return None
    if os.environ.get("SPACE_ID"):
        forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return f"addr:{forwarded[:64]}"
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return f"addr:{host}" if host else None
