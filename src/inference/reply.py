"""A chat reply with tools or reasoning: how it is asked for, and how it is taken apart.

Before the call, :func:`plan_chat` decides how the tools reach the model and
what the output is held to:

- a template that takes ``tools`` (transformers' convention) renders them,
  and the reply is read in that family's call format
  (:func:`inference.tool_calls.format_for`);
- a template that takes none (SmolLM2's) gets llama.cpp's *generic*
  format: the tools described in the system message, calls in assistant
  turns written back as ``{"tool_call": ...}`` JSON, and the output
  constrained to such a call or a plain answer;
- ``tool_choice="required"`` or a named function constrains the output to
  a valid call (so even a 135M model returns one that validates);
  ``"none"`` leaves the tools out.

As the reply streams, :class:`ReplySplitter` keeps apart the answer (the
tokens a program shows), the reasoning (``<think>`` blocks: tokens with
``reasoning=True``) and the text of calls (never shown; parsed into
:class:`~inference.ToolCall` values when the stream ends). Text that might
be the start of a marker is held back until it cannot be.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .constraints import JSON_LAYOUT, Constraint
from .options import GenerateConfig
from .stream import StreamControl
from .tool_calls import (
    Tool,
    ToolFormat,
    call_schema,
    format_for,
    generic_response,
    generic_system_prompt,
)
from .types import FinishReason, Message, Token, ToolCall

__all__ = ["THINK", "ChatPlan", "ReplySplitter", "plan_chat", "split_reply"]

#: The markers of a reasoning block (Qwen3, DeepSeek-R1 and their kind).
THINK = ("<think>", "</think>")


@dataclass(slots=True)
class ChatPlan:
    """What :func:`plan_chat` decided for one chat call."""

    messages: list[Message]
    #: Extra template variables: ``tools``, ``enable_thinking``, the user's own.
    variables: dict[str, Any] = field(default_factory=dict)
    #: The constraint the tool choice implies (None: the call's own, if any).
    constraint: Constraint | None = None
    #: The call format to read calls in (None: tools are not in play).
    tool_format: ToolFormat | None = None
    #: Whether the model thinks in ``<think>`` blocks.
    thinks: bool = False


def _generic_messages(
    messages: Sequence[Message], tools: Sequence[Tool], choice: str
) -> list[Message]:
    """``messages`` with the tools described in the system message and past
    calls written as the generic JSON, for a template that takes no tools."""
    out: list[Message] = []
    for m in messages:
        if m.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
            body = {"tool_call": calls[0]} if len(calls) == 1 else {"tool_calls": calls}
            out.append(Message("assistant", json.dumps(body)))
        elif m.role == "tool":
            response = {"tool_response": {"id": m.tool_call_id, "content": m.content}}
            out.append(Message("tool", json.dumps(response)))
        else:
            out.append(m)
    prompt = generic_system_prompt(tools, choice)
    if out and out[0].role == "system":
        out[0] = Message("system", f"{out[0].content}\n\n{prompt}")
    else:
        out.insert(0, Message("system", prompt))
    return out


def _lark_literal(text: str, special: Callable[[str], bool]) -> str:
    """``text`` in a Lark grammar: a special token by name, else a string."""
    return text if special(text) and text.startswith("<") else json.dumps(text)


def _json_rule(tools: Sequence[Tool], *, generic: bool) -> str:
    return json.dumps({**call_schema(tools, generic=generic), "x-guidance": JSON_LAYOUT})


def _call_grammar(fmt: ToolFormat, tools: Sequence[Tool], special: Callable[[str], bool]) -> str:
    """A Lark grammar for exactly one call in ``fmt``."""
    schema = _json_rule(tools, generic=fmt.name == "generic")
    if fmt.name == "hermes":
        open_, close = _lark_literal("<tool_call>", special), _lark_literal("</tool_call>", special)
        return f'start: {open_} "\\n" call "\\n" {close}\ncall: %json{schema}'
    if fmt.name == "mistral":
        return f'start: {_lark_literal("[TOOL_CALLS]", special)} "[" call "]"\ncall: %json{schema}'
    return f"start: call\ncall: %json{schema}"  # generic, llama3 (bare JSON)


def _call_or_text_grammar(tools: Sequence[Tool]) -> str:
    """A Lark grammar for a generic call or a plain answer (not JSON)."""
    schema = _json_rule(tools, generic=True)
    return f"start: call | text\ncall: %json{schema}\ntext: /[^{{\\s][\\s\\S]*/"


def plan_chat(
    messages: Sequence[Message],
    cfg: GenerateConfig,
    *,
    template: str,
    takes_tools: bool,
    special: Callable[[str], bool] = lambda _t: False,
    constrains: bool = True,
) -> ChatPlan:
    """How to render and read a chat call: see the module docstring.

    ``special(text)`` says whether ``text`` is one special token of the
    model; ``constrains`` whether the model can enforce a grammar (if not,
    the tools are still offered, unconstrained).
    """
    plan = ChatPlan(list(messages), dict(cfg.template_vars), thinks=THINK[0] in template)
    if cfg.enable_thinking is not None:
        plan.variables["enable_thinking"] = cfg.enable_thinking
    if not cfg.tools or cfg.tool_choice == "none":
        return plan
    choice = cfg.tool_choice
    tools = list(cfg.tools)
    forced = choice.removeprefix("function:")
    if forced != choice:
        tools = [t for t in tools if t.name == forced]
    fmt = format_for(template, takes_tools)
    plan.tool_format = fmt
    if fmt.name == "generic":
        plan.messages = _generic_messages(messages, tools, choice)
    else:
        plan.variables["tools"] = [t.to_dict() for t in cfg.tools]
    if not constrains:
        return plan
    if choice == "auto":
        if fmt.name == "generic":
            plan.constraint = Constraint("grammar", _call_or_text_grammar(tools))
    elif fmt.name != "pythonic":
        plan.constraint = Constraint("grammar", _call_grammar(fmt, tools, special))
    return plan


class ReplySplitter:
    """Takes a streamed reply apart into answer, reasoning and call text.

    ``push(token)`` returns the tokens to emit now (possibly none, while a
    marker may be starting; possibly the text of several, as one token);
    ``finish()`` returns the rest and sets :attr:`tool_calls`.
    """

    __slots__ = ("_calls", "_fmt", "_id", "_markers", "_mode", "_pending", "_think", "tool_calls")

    @property
    def markers(self) -> tuple[str, ...]:
        """Every marker the splitter looks for (tool calls, reasoning)."""
        return self._markers + (THINK if self._think else ())

    def __init__(
        self, fmt: ToolFormat | None, *, thinks: bool = False, thinking: bool = False
    ) -> None:
        self._fmt = fmt
        self._think = thinks
        self._mode = "reasoning" if thinking else "start"
        self._pending = ""
        self._calls: list[str] = []
        self._id = -1
        self._markers = fmt.markers if fmt is not None else ()
        self.tool_calls: tuple[ToolCall, ...] = ()

    def push(self, tok: Token) -> list[Token]:
        if tok.reasoning:  # already told apart (a server's reasoning field)
            return [tok]
        self._id = tok.id
        if self._mode == "answer" and not self._pending and not self._could_start(tok.text):
            return [tok]  # the common case: nothing to take apart
        self._pending += tok.text
        out: list[Token] = []
        self._run(out, final=False)
        if len(out) == 1 and out[0].text == tok.text and out[0].reasoning == tok.reasoning:
            return [tok]  # keep its log-probabilities
        return out

    def finish(self) -> list[Token]:
        out: list[Token] = []
        self._run(out, final=True)
        fmt, pending = self._fmt, self._pending
        self._pending = ""
        if self._mode == "whole" and fmt is not None:
            calls = fmt.parse(pending) if pending.strip() else []
            if calls:
                self.tool_calls = tuple(calls)
                return out
            answer = generic_response(pending) if fmt.name == "generic" else None
            self._emit(out, pending if answer is None else answer, reasoning=False)
            return out
        if self._mode == "call":
            self._calls.append(pending)
        elif self._mode == "reasoning":
            self._emit(out, pending, reasoning=True)
        else:
            self._emit(out, pending, reasoning=False)
        if self._calls and fmt is not None:
            text = "".join(self._calls)
            calls = fmt.parse(text)
            if calls:
                self.tool_calls = tuple(calls)
            else:  # not a call after all: the model's words are the answer
                self._emit(out, text, reasoning=False)
        return out

    # -- machinery -------------------------------------------------------------

    def _could_start(self, text: str) -> bool:
        return any(c in text for c in "<[") and bool(self._markers)

    def _emit(self, out: list[Token], text: str, *, reasoning: bool) -> None:
        if text:
            out.append(Token(self._id, text, reasoning=reasoning))

    def _held(self, text: str, markers: Sequence[str]) -> int:
        """How many characters at the end of ``text`` may begin a marker."""
        longest = max((len(m) for m in markers), default=0)
        for k in range(min(len(text), longest - 1), 0, -1):
            tail = text[-k:]
            if any(m.startswith(tail) for m in markers):
                return k
        return 0

    def _run(self, out: list[Token], *, final: bool) -> None:
        while True:
            mode, text = self._mode, self._pending
            if mode == "after":  # the answer after a reasoning block: its blank lines go
                body = text.lstrip()
                if not body and not final:
                    return
                self._pending, self._mode = body, "start"
                continue
            if mode == "start":
                body = text.lstrip()
                if not body:
                    if final:
                        self._mode = "answer"
                    return
                if self._think and body.startswith(THINK[0]):
                    self._pending, self._mode = body[len(THINK[0]) :], "reasoning"
                    continue
                if self._think and THINK[0].startswith(body) and not final:
                    return
                fmt = self._fmt
                if fmt is not None and fmt.leading and body[0] in fmt.leading:
                    self._pending, self._mode = body, "whole"
                    return
                self._mode = "answer"
                continue
            if mode == "reasoning":
                end = text.find(THINK[1])
                if end >= 0:
                    self._emit(out, text[:end], reasoning=True)
                    self._pending, self._mode = text[end + len(THINK[1]) :], "after"
                    continue
                keep = 0 if final else self._held(text, (THINK[1],))
                self._emit(out, text[: len(text) - keep], reasoning=True)
                self._pending = text[len(text) - keep :]
                return
            if mode == "answer":
                found = [i for m in self._markers if (i := text.find(m)) >= 0]
                if found:
                    i = min(found)
                    self._emit(out, text[:i], reasoning=False)
                    self._pending, self._mode = text[i:], "call"
                    continue
                keep = 0 if final else self._held(text, self._markers)
                self._emit(out, text[: len(text) - keep], reasoning=False)
                self._pending = text[len(text) - keep :]
                return
            if mode == "call":
                closing = self._fmt.end if self._fmt is not None else ""
                stop = text.find(closing) if closing else -1
                if stop >= 0:
                    self._calls.append(text[: stop + len(closing)])
                    self._pending, self._mode = text[stop + len(closing) :], "answer"
                    continue
                return
            return  # "whole": everything waits for the end


def split_reply(
    gen: Generator[Token, None, FinishReason], splitter: ReplySplitter, control: StreamControl
) -> Generator[Token, None, FinishReason]:
    """``gen``'s tokens taken apart by ``splitter``; the calls it found are
    left in ``control.tool_calls`` when the reply ends (a reply that fails
    or is cancelled has none)."""
    push = splitter.push
    try:
        while True:
            try:
                tok = next(gen)
            except StopIteration as stop:
                reason: FinishReason = stop.value or "stop"
                break
            yield from push(tok)
    finally:
        gen.close()
    yield from splitter.finish()
    control.tool_calls = control.tool_calls + splitter.tool_calls  # after any the server sent
    return reason
