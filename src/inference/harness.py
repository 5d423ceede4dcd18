"""lm-evaluation-harness on any ``inference`` model: the ``inference`` LM.

An optional module: it imports ``lm_eval`` (``pip install lm-eval``), which
nothing else in ``inference`` does. Hand it a loaded model, or let lm-eval
load one::

    import lm_eval
    from inference.harness import InferenceLM

    with inference.load_model("model.gguf") as model:
        results = lm_eval.simple_evaluate(model=InferenceLM(model), tasks=["hellaswag"])

    # or by name, as lm-eval's own models are (importing this module registers it):
    lm_eval.simple_evaluate(model="inference", model_args="path=model.gguf,backend=mlx", ...)

``loglikelihood`` and ``loglikelihood_rolling`` are the model's
:class:`~inference.Scorer` methods (``score_batch`` and ``score_rolling``,
which follow lm-eval's own token-boundary and window rules), so a model that
is not a Scorer can run only generation tasks. ``generate_until`` streams
greedy or sampled text with the request's ``until`` strings as stop strings
and ``max_gen_toks`` as ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .errors import GenerationError
from .protocols import Scorer, TextModel
from .registry import load_model

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

__all__ = ["InferenceLM"]

#: Pairs per ``score_batch`` call.
DEFAULT_BATCH_SIZE = 16
#: lm-eval's own default for ``max_gen_toks``.
DEFAULT_MAX_GEN_TOKS = 256


@register_model("inference")
class InferenceLM(LM):  # type: ignore[misc]
    """An lm-eval ``LM`` over an ``inference`` model.

    Give ``model`` (a loaded :class:`~inference.TextModel`, which stays
    yours to close), or ``path`` and load options such as ``backend``,
    ``context_len`` or ``gpu_layers`` (the model is then loaded here; call
    :meth:`close` when done). lm-eval's own ``batch_size`` sets the pairs per
    scoring call; ``device`` is ignored (the backend chooses).
    """

    def __init__(
        self,
        model: TextModel | None = None,
        *,
        path: str | None = None,
        batch_size: int | str | None = None,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        device: str | None = None,
        **load_options: Any,
    ) -> None:
        super().__init__()
        if (model is None) == (path is None):
            raise TypeError("InferenceLM needs a model or a path, not both")
        self._owned = model is None
        self.model: TextModel = (
            model if model is not None else load_model(str(path), **load_options)
        )
        size = str(batch_size or "")
        self.batch_size = int(size) if size.isdigit() else DEFAULT_BATCH_SIZE
        self.max_gen_toks = int(max_gen_toks)

    def close(self) -> None:
        """Close the model if this adapter loaded it."""
        if self._owned:
            self.model.close()

    def _scorer(self) -> Scorer:
        if not isinstance(self.model, Scorer):
            raise GenerationError(
                f"the {self.model.info.backend or 'model'} backend cannot score text: "
                "lm-eval's loglikelihood tasks need a model that is an inference.Scorer"
            )
        return self.model

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        scorer = self._scorer()
        pairs = [_pair(r.args) for r in requests]
        out: list[tuple[float, bool]] = []
        for start in range(0, len(pairs), self.batch_size):
            results = scorer.score_batch(pairs[start : start + self.batch_size])
            for request, result in zip(requests[start:], results, strict=False):
                answer = (result.total, result.is_greedy)
                self.cache_hook.add_partial("loglikelihood", request.args, answer)
                out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        scorer = self._scorer()
        out = []
        for request in requests:
            (text,) = request.args
            total = scorer.score_rolling(text).total
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None)
            stops = [until] if isinstance(until, str) else list(until or [])
            max_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            if not kwargs.pop("do_sample", temperature > 0):
                temperature = 0.0
            options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
            if stops:
                options["stop"] = [s for s in stops if s]
            if "top_p" in kwargs and temperature > 0:
                options["top_p"] = float(kwargs.pop("top_p"))
            if "seed" in kwargs:
                options["seed"] = int(kwargs.pop("seed"))
            text = self.model.generate(context, **options).text()
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out


def _pair(args: Sequence[Any]) -> tuple[str, str]:
    context, continuation = args[0], args[1]
    return str(context), str(continuation)
