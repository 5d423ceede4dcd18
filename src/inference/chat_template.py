"""Render a model's own chat template, safely.

A chat template comes from the model file and is untrusted input: it is
compiled and rendered in Jinja2's ``ImmutableSandboxedEnvironment``, so one
that reaches for Python internals raises instead of running
(CVE-2024-34359 was llama-cpp-python rendering GGUF templates unsandboxed).

Jinja2 is imported only when a template is first rendered; the backends
that render templates depend on it, the core does not.

A model that ships no template gets its family's documented format
(:mod:`inference.chat_families`); ``render_chat(None, ...)`` renders
:data:`CHATML_TEMPLATE`, the ChatML format
that llama.cpp also falls back to.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import GenerationError, ModelLoadError
from .types import Message

__all__ = [
    "CHATML_TEMPLATE",
    "Prompt",
    "compile_template",
    "keep_content_literal",
    "render_chat",
    "template_message",
    "template_takes",
]

#: The fallback template for models that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _TemplateError(Exception):
    """Raised by a template's own ``raise_exception(...)``."""


def _raise_exception(message: str) -> None:
    raise _TemplateError(message)


def _strftime_now(fmt: str) -> str:
    import datetime  # imported here: it costs start-up time

    return datetime.datetime.now().strftime(fmt)


#: Longest string or list a template may build with ``*`` (and the largest
#: power it may raise), so that ``'a' * 10**9`` cannot exhaust memory.
MAX_TEMPLATE_ITEMS = 1 << 20


def _bounded_sandbox(base: Any) -> Any:
    """The sandbox with ``*`` and ``**`` bounded (Jinja2 bounds only range)."""
    from jinja2.exceptions import SecurityError

    class BoundedSandbox(base):  # type: ignore[misc]
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    sized = isinstance(seq, (str, list, tuple)) and isinstance(n, int)
                    if sized and len(seq) * n > MAX_TEMPLATE_ITEMS:
                        raise SecurityError("the template builds a value that is too large")
            elif operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise SecurityError("the template raises a number to too large a power")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> Any:
    """Compile ``source`` in a sandbox; ModelLoadError if it is not valid Jinja."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:  # pragma: no cover - backends depend on jinja2
        raise ModelLoadError(
            "chat templates need Jinja2, which is not installed: pip install jinja2"
        ) from exc
    env = _bounded_sandbox(ImmutableSandboxedEnvironment)(
        trim_blocks=True, lstrip_blocks=True, autoescape=False
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ModelLoadError(f"the model's chat template is not valid: {exc}") from exc


@functools.lru_cache(maxsize=32)
def template_takes(source: str) -> frozenset[str]:
    """The variables ``source`` reads from outside (``tools``,
    ``enable_thinking``...), so that a caller knows what it may pass."""
    from jinja2 import TemplateError, meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        parsed = ImmutableSandboxedEnvironment().parse(source)
    except TemplateError:
        return frozenset()
    return frozenset(meta.find_undeclared_variables(parsed))


def template_message(message: Message) -> dict[str, Any]:
    """``message`` as chat templates read it (transformers' convention): a
    call's ``arguments`` a dict, not JSON text."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None or empty);
    ``variables`` are more template variables (``tools``, ``enable_thinking``...).

    Raises :class:`~inference.GenerationError` when the template fails or
    tries an operation the sandbox forbids; nothing it asks for is run.
    """
    compiled = compile_template(template or CHATML_TEMPLATE)  # ModelLoadError without Jinja2
    from jinja2.exceptions import SecurityError

    try:
        rendered = compiled.render(
            **(variables or {}),
            messages=[template_message(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except SecurityError as exc:
        raise GenerationError(
            f"the model's chat template tried an unsafe operation and was stopped: {exc}"
        ) from exc
    except _TemplateError as exc:
        raise GenerationError(f"the model's chat template refused the messages: {exc}") from exc
    except Exception as exc:
        # Whatever else a template can raise: TemplateError, TypeError,
        # OverflowError (a sandboxed range too big), ZeroDivisionError,
        # RecursionError (a macro calling itself)...
        raise GenerationError(
            f"the model's chat template failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(rendered, str):  # pragma: no cover - jinja always returns str
        raise GenerationError("the model's chat template did not render text")
    return rendered


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered chat prompt in parts: ``(text, literal)`` pairs, where a
    literal part is a message's content, to be tokenised as plain text
    (special-token text in it is characters, not markers), and the other
    parts are the template's, whose markers are real."""

    parts: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


def keep_content_literal(
    render: Callable[[Sequence[Message]], str],
    messages: Sequence[Message],
    holds_markers: Callable[[str], bool],
) -> str | Prompt:
    """``render(messages)``, with the content of every message that
    ``holds_markers`` kept apart as a literal part of a :class:`Prompt` (the
    plain text when none does).

    Such content is rendered as a placeholder that no client can guess, then
    put back in place of it: so ``"<|im_end|>\\n<|im_start|>system"`` in a user
    message stays text the model reads, never a turn of the conversation. A
    template that changes the content it renders (the placeholder not found
    exactly once) is refused for such a message rather than guessed at.
    """
    marked = [i for i, m in enumerate(messages) if m.content and holds_markers(m.content)]
    if not marked:
        return render(messages)
    nonce = secrets.token_hex(16)
    holders = {i: f"\ue000{nonce}.{i}\ue001" for i in marked}
    rendered = render(
        [replace(m, content=holders[i]) if i in holders else m for i, m in enumerate(messages)]
    )
    places: list[tuple[int, int]] = []
    for i, holder in holders.items():
        at = rendered.find(holder)
        if at < 0 or rendered.find(holder, at + 1) >= 0:
            raise GenerationError(
                f"message {i} holds special-token text (such as a turn marker), and the "
                "model's chat template changes the content it renders, so it cannot be kept "
                "as plain text; remove the marker text from the message"
            )
        places.append((at, i))
    parts: list[tuple[str, bool]] = []
    done = 0
    for at, i in sorted(places):
        parts += [(rendered[done:at], False), (messages[i].content, True)]
        done = at + len(holders[i])
    parts.append((rendered[done:], False))
    return Prompt(tuple(parts))
