"""The server's counters, and ``/metrics`` in Prometheus's text format."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from inference import GenerateMetrics

__all__ = ["ServerMetrics"]


@dataclass
class _Tokens:
    """One model's token counts and times."""

    prompt: int = 0
    cached: int = 0
    generated: int = 0
    drafted: int = 0
    accepted: int = 0
    decode_seconds: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0


class ServerMetrics:
    """Requests by route and status, the queue, and each model's tokens and
    time to first token."""

    def __init__(self, models: list[str]) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.active = 0
        self.waiting = 0
        self.rejected = 0
        self._models = {name: _Tokens() for name in models}

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def finished(self, model: str, m: GenerateMetrics | None) -> None:
        if m is None:
            return
        with self._lock:
            t = self._models[model]
            t.prompt += m.prompt_tokens
            t.cached += m.cached_tokens
            t.generated += m.generated_tokens
            t.drafted += m.drafted_tokens
            t.accepted += m.accepted_tokens
            t.decode_seconds += m.decode_seconds
            if m.generated_tokens:
                t.ttft_sum += m.time_to_first_token
                t.ttft_count += 1

    def embedded(self, model: str, tokens: int) -> None:
        """Count an embedding request's tokens as prompt tokens."""
        with self._lock:
            self._models[model].prompt += tokens

    def tokens(self, model: str) -> tuple[int, int]:
        """``model``'s prompt and generated tokens so far."""
        with self._lock:
            t = self._models[model]
            return t.prompt, t.generated

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP inference_requests_total HTTP requests by route and status.",
                "# TYPE inference_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'inference_requests_total{{route="{route}",status="{status}"}} {n}')
            for name, kind, text, value in [
                ("inference_active_requests", "gauge", "Requests running now.", self.active),
                ("inference_queue_depth", "gauge", "Requests waiting for a slot.", self.waiting),
                ("inference_rejected_total", "counter", "Requests answered 429.", self.rejected),
            ]:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
            per_model: list[tuple[str, str, str, Callable[[_Tokens], float]]] = [
                ("inference_prompt_tokens_total", "counter", "Prompt tokens.", lambda t: t.prompt),
                (
                    "inference_cached_prompt_tokens_total",
                    "counter",
                    "Prompt tokens whose KV came from a cache.",
                    lambda t: t.cached,
                ),
                (
                    "inference_generated_tokens_total",
                    "counter",
                    "Generated tokens.",
                    lambda t: t.generated,
                ),
                (
                    "inference_drafted_tokens_total",
                    "counter",
                    "Tokens guessed by speculative decoding and checked by the model.",
                    lambda t: t.drafted,
                ),
                (
                    "inference_accepted_tokens_total",
                    "counter",
                    "Guessed tokens the model accepted.",
                    lambda t: t.accepted,
                ),
                (
                    "inference_decode_tokens_per_second",
                    "gauge",
                    "Generated tokens over decode time.",
                    lambda t: t.generated / t.decode_seconds if t.decode_seconds else 0.0,
                ),
            ]
            for name, kind, text, read in per_model:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                for model, counts in self._models.items():
                    lines.append(f'{name}{{model="{_label(model)}"}} {read(counts)}')
            ttft = "inference_time_to_first_token_seconds"
            lines += [f"# HELP {ttft} Time to the first token.", f"# TYPE {ttft} summary"]
            for m, t in self._models.items():
                lines.append(f'{ttft}_sum{{model="{_label(m)}"}} {t.ttft_sum}')
                lines.append(f'{ttft}_count{{model="{_label(m)}"}} {t.ttft_count}')
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """``value`` as a Prometheus label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
