"""llama.cpp's ``rope_freqs`` tensor, back to the ``llama3`` rope-scaling entry it came from.

llama.cpp's converter turns a Llama 3.1-style ``rope_scaling`` into a tensor
of per-frequency factors; mlx-lm wants the four numbers again.
:func:`fit_llama3_rope` finds them, and :func:`llama3_rope_factors` is the
formula both sides use.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fit_llama3_rope", "llama3_rope_factors"]


def llama3_rope_factors(
    *, base: float, dims: int, factor: float, low: float, high: float, original_context: int
) -> list[float]:
    """The per-frequency factors llama.cpp writes as ``rope_freqs`` for llama3 scaling.

    Each is the multiple of the plain RoPE wavelength, as in mlx-lm's
    ``Llama3RoPE``: ``factor`` for long wavelengths, 1 for short ones, and a
    smooth blend between.
    """
    low_wavelen = original_context / low
    high_wavelen = original_context / high
    out = []
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * base ** (i / dims)
        if wavelen > low_wavelen:
            out.append(factor)
        elif wavelen > high_wavelen:
            smooth = (original_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
        else:
            out.append(1.0)
    return out


def fit_llama3_rope(
    factors: list[float], *, base: float, dims: int, original_context: int = 8192
) -> dict[str, Any] | None:
    """A ``llama3`` rope-scaling config that reproduces ``factors``, or None.

    Only the ratios of ``original_context`` to the low and high frequency
    factors enter the result, so ``original_context`` is taken as given and
    the two factors are fitted: Llama 3's own (1 and 4) are tried first, then
    a straight-line fit through the blended frequencies.
    """
    if len(factors) != dims // 2 or not factors:
        return None
    factor = max(factors)
    if factor <= 1.0 + 1e-6:
        return None
    candidates = [(1.0, 4.0)]
    xs: list[float] = []
    ys: list[float] = []
    for i, f in enumerate(factors):
        if 1.0 + 1e-4 < f < factor - 1e-4:
            wavelen = 2 * math.pi * base ** (2 * i / dims)
            xs.append(original_context / wavelen)
            ys.append((1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor))
    if len(xs) >= 2:
        n = len(xs)
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if sxx > 0:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
            if slope > 0:
                intercept = mean_y - slope * mean_x
                low = -intercept / slope
                candidates.append((low, low + 1.0 / slope))
    for low, high in candidates:
        if not 0 < low < high:
            continue
        expected = llama3_rope_factors(
            base=base,
            dims=dims,
            factor=factor,
            low=low,
            high=high,
            original_context=original_context,
        )
        if all(math.isclose(a, b, rel_tol=2e-3) for a, b in zip(expected, factors, strict=True)):
            return {
                "type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original_context,
            }
    return None
