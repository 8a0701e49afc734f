"""The app's edge: every value a handler or an input component receives may come from any HTTP
client, so each is checked here and anything malformed gets a short plain message, never a
traceback, and never an echo of more than a few dozen characters of what was sent."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import gradio as gr

log = logging.getLogger("cifarapp.ui")

# what a message may quote of a value it received
QUOTE_CHARS = 40
MAX_MESSAGE_CHARS = 600
# exceptions that malformed input raises inside handlers (wrong types, bad numbers, deep JSON)
MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
             UnicodeError)


def short(value: Any, limit: int = QUOTE_CHARS) -> str:
    """repr(value), cut to `limit` characters."""
    try:
        text = repr(value)
    except Exception:  # a hostile object's repr may fail; say what it is instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


def cut(text: str, limit: int) -> str:
    """`text` (a message of the app's) cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


def plain_error(message: str) -> gr.Error:
    """A gr.Error shown to the user and not logged with a traceback (the input was bad, the app is fine)."""
    return gr.Error(cut(str(message), MAX_MESSAGE_CHARS), print_exception=False)


def guarded(handler: Callable) -> Callable:
    """Wrap an event handler so that malformed input becomes a plain message and one log line."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except MALFORMED as exc:
            log.warning("%s refused malformed input: %s", handler.__name__, type(exc).__name__)
            raise plain_error(f"That request could not be handled ({type(exc).__name__}); check the values sent.") \
                from None

    return wrapper


def text_value(value: Any, what: str, max_chars: int = 200, optional: bool = False) -> str | None:
    """`value` if it is a string of at most `max_chars` characters (None or '' when optional)."""
    if optional and value in (None, ""):
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars or "\x00" in value:
        raise plain_error(f"{what} must be a short text, got {short(value)}")
    return value


def one_of(value: Any, options: Iterable[str], what: str) -> str:
    """`value` if it is one of `options`."""
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise plain_error(f"unknown {what} {short(value)}; choose from {', '.join(options)}")
    return value


def text_list(value: Any, what: str, max_items: int = 50) -> list[str]:
    """A list of short texts (None is an empty list)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > max_items:
        raise plain_error(f"{what} must be a list of at most {max_items} names, got {short(value)}")
    return [text_value(v, what) for v in value]


class SafeBlocks(gr.Blocks):
    """gr.Blocks with two repairs of Gradio 6.31's request handling:

    - Input processing refuses malformed values with a plain message. Gradio's own checks (a
      file that was not uploaded through the app, a file value without its marker, a NaN in an
      integer field, a choice that is not offered, too few values) otherwise print a traceback
      for every hostile request.
    - A session's copy of the app does not grow with every poll. Gradio answers a skipped
      output by making a fresh component for the session, and when that output next gets a value
      it files the fresh component under its own new id: each skip-then-value of the Train tab's
      plots would leave a component with its plot data in the session (60 MB per 1,000 polls).
    """

    async def postprocess_data(self, block_fn, predictions, state):
        output = await super().postprocess_data(block_fn, predictions, state)
        if state is not None:
            stray = [key for key in state.blocks_config.blocks if key not in self.blocks]
            for key in stray:  # this app renders nothing dynamically: every id it has is in self.blocks
                del state.blocks_config.blocks[key]
                state.config_values.pop(key, None)
        return output

    async def preprocess_data(self, *args, **kwargs):
        try:
            return await super().preprocess_data(*args, **kwargs)
        except gr.Error as exc:
            if not exc.print_exception:
                raise
            raise plain_error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any failure to take an input is the input's fault
            log.warning("refused a malformed input: %s", type(exc).__name__)
            raise plain_error(f"A value sent to this app is malformed ({type(exc).__name__}); "
                              "check the values and their types.") from None
