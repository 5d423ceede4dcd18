"""The server's counters, and ``/metrics`` in Prometheus's text format."""

from __future__ import annotations

import threading
from collections import Counter

from inference import GenerateMetrics

__all__ = ["ServerMetrics"]


class ServerMetrics:
    """Requests by route and status, the queue, tokens and time to first token."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.active = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.decode_seconds = 0.0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.rejected = 0

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def finished(self, m: GenerateMetrics | None) -> None:
        if m is None:
            return
        with self._lock:
            self.prompt_tokens += m.prompt_tokens
            self.generated_tokens += m.generated_tokens
            self.decode_seconds += m.decode_seconds
            if m.generated_tokens:
                self.ttft_sum += m.time_to_first_token
                self.ttft_count += 1

    def embedded(self, tokens: int) -> None:
        """Count an embedding request's tokens as prompt tokens."""
        with self._lock:
            self.prompt_tokens += tokens

    def render(self, model: str) -> str:
        label = model.replace("\\", "\\\\").replace('"', '\\"')
        with self._lock:
            lines = [
                "# HELP inference_requests_total HTTP requests by route and status.",
                "# TYPE inference_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'inference_requests_total{{route="{route}",status="{status}"}} {n}')
            tps = self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0
            rows = [
                ("inference_active_requests", "gauge", "Generations running now.", self.active),
                ("inference_queue_depth", "gauge", "Requests waiting for a slot.", self.waiting),
                ("inference_rejected_total", "counter", "Requests answered 429.", self.rejected),
                ("inference_prompt_tokens_total", "counter", "Prompt tokens.", self.prompt_tokens),
                (
                    "inference_generated_tokens_total",
                    "counter",
                    "Generated tokens.",
                    self.generated_tokens,
                ),
                (
                    "inference_decode_tokens_per_second",
                    "gauge",
                    "Generated tokens over decode time.",
                    tps,
                ),
            ]
            for name, kind, text, value in rows:
                lines += [
                    f"# HELP {name} {text}",
                    f"# TYPE {name} {kind}",
                    f'{name}{{model="{label}"}} {value}',
                ]
            lines += [
                "# HELP inference_time_to_first_token_seconds Time to the first token.",
                "# TYPE inference_time_to_first_token_seconds summary",
                f'inference_time_to_first_token_seconds_sum{{model="{label}"}} {self.ttft_sum}',
                f'inference_time_to_first_token_seconds_count{{model="{label}"}} {self.ttft_count}',
            ]
        return "\n".join(lines) + "\n"
