"""What a model can do, said once as data, and the front door's refusal of the rest.

Every model has one frozen :class:`Capabilities` value, ``m.capabilities``,
fixed when it is loaded (or connected). Programs, servers and the
conformance suite read it instead of trying a call to see whether it fails;
:func:`refuse_unsupported` is the one place where a call asking for what the
model lacks is refused, with :class:`~inference.UnsupportedOptionError`
naming the option and the backend, before any work is done or any request
sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .constraints import KINDS, constraint_of
from .errors import UnsupportedOptionError
from .options import GenerateConfig

__all__ = ["Capabilities", "embedding_only", "refuse_unsupported"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one loaded model can do. Every field has a default, so that a
    capability added later (embeddings, reranking, speculation) leaves the
    existing ones as they are."""

    #: ``generate``, ``chat`` and ``batch_generate`` stream text.
    generate: bool = True
    #: Streamed tokens can carry log-probabilities (``logprobs=k``).
    logprobs: bool = False
    #: The most alternatives ``logprobs=k`` may ask for per token.
    top_logprobs: int = 0
    #: ``classify(return_logits=True)`` gives every token's logit.
    logits: bool = False
    #: ``score``, ``score_batch`` and ``score_rolling`` work (the model is a
    #: :class:`~inference.Scorer`).
    scoring: bool = False
    #: The structured-output options it enforces (names of
    #: :data:`inference.constraints.KINDS`).
    constraints: frozenset[str] = field(default_factory=frozenset)
    #: ``chat(tools=...)`` can be held to a call (``tool_choice="required"``
    #: or a tool's name). Without it the tools are still offered and the
    #: reply's calls parsed, but a call cannot be required.
    tools: bool = False
    #: The chat template has a reasoning block (``<think>``), kept apart
    #: from the answer and switched by ``enable_thinking``.
    reasoning: bool = False
    #: A ``seed`` makes sampling at a temperature above zero repeatable.
    seeded_sampling: bool = False
    #: ``Token.id`` is the model's real token id (a remote server may not say).
    token_ids: bool = True
    #: The alternatives of ``logprobs=k`` carry real token ids too (vLLM
    #: reports their texts only: their ``id`` is -1).
    alternative_ids: bool = True
    #: ``stop_tokens`` (ids) end a generation (a server that neither stops on
    #: ids nor reports them cannot).
    stop_tokens: bool = True
    #: Streams the engine decodes together (continuous batching); 1: one at a time.
    parallel_streams: int = 1
    #: Tokens of context (prompt and reply together); 0 if not known.
    context_length: int = 0
    #: ``embed`` gives vectors (of ``embedding_dimensions`` values).
    embed: bool = False
    embedding_dimensions: int = 0
    #: ``rerank`` orders documents for a query (by the model's classification
    #: head, or by the cosine similarity of embeddings: the result says).
    rerank: bool = False
    #: How it decodes speculatively: "ngram" (guesses copied from the prompt
    #: and the text so far), "draft" (a draft model's guesses), or "" (it
    #: does not). The guesses are checked by the model itself, so the output
    #: is what it would be without them; ``stream.metrics.drafted_tokens``
    #: and ``accepted_tokens`` count them.
    speculative: str = ""

    def as_dict(self) -> dict[str, object]:
        """Every field, as JSON-ready values (the constraint kinds sorted as
        :data:`~inference.constraints.KINDS` lists them)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, frozenset):
                value = [k for k in KINDS if k in value]
            out[f.name] = value
        return out


def embedding_only(caps: Capabilities) -> Capabilities:
    """``caps`` of a model that only embeds (an encoder, or a file made for
    embedding): nothing that generates, so ``generate`` and ``chat`` are
    refused at the front door like any other missing capability."""
    return replace(
        caps,
        generate=False,
        logprobs=False,
        top_logprobs=0,
        logits=False,
        scoring=False,
        constraints=frozenset(),
        tools=False,
        reasoning=False,
        seeded_sampling=False,
        speculative="",
    )


def refuse_unsupported(
    cfg: GenerateConfig, caps: Capabilities, backend: str, *, label: str = ""
) -> None:
    """UnsupportedOptionError, naming the option and ``backend`` (the backend
    or server kind), if ``cfg`` asks for something ``caps`` lacks; ``label``
    is how the message names it (default: ``backend``)."""

    def refuse(option: str, why: str) -> None:
        raise UnsupportedOptionError(f"{label or backend} {why}", option=option, backend=backend)

    if not caps.generate:
        refuse("generate", "does not generate text (an encoder model)")
    wanted = constraint_of(cfg)
    if wanted is not None and wanted.kind not in caps.constraints:
        have = ", ".join(k for k in KINDS if k in caps.constraints) or "none"
        refuse(wanted.kind, f"cannot enforce {wanted.kind}= (it accepts: {have})")
    if cfg.logprobs is not None:
        if not caps.logprobs:
            refuse("logprobs", "cannot report log-probabilities (logprobs=)")
        if cfg.logprobs > caps.top_logprobs:
            refuse(
                "logprobs",
                f"reports at most {caps.top_logprobs} alternatives a token "
                f"(logprobs={cfg.logprobs})",
            )
    if cfg.stop_tokens and not caps.stop_tokens:
        refuse(
            "stop_tokens",
            "cannot honour stop_tokens= (it can neither stop on token ids nor report them); "
            "use stop strings (stop=)",
        )
    if not caps.speculative:
        if cfg.speculative:
            refuse(
                "speculative",
                'does not decode speculatively (load it with speculative="ngram" '
                "or a draft_model=)",
            )
        if cfg.draft_max:
            refuse("draft_max", "does not decode speculatively, so draft_max= does not apply")
    if cfg.return_logits and not caps.logits:
        refuse("return_logits", "cannot return logits (return_logits=)")
    choice = cfg.tool_choice
    if cfg.tools and choice not in ("auto", "none") and not caps.tools:
        refuse("tool_choice", f"cannot hold a reply to a tool call (tool_choice={choice!r})")
