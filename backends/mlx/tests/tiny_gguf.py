"""Tiny random-weight GGUF models, laid out as llama.cpp's converter lays them out.

Written with gguf-py's ``GGUFWriter`` (its tensor names, Q and K rows of
llama as the converter permutes them, Gemma's norm weights as stored, Phi-3's
fused QKV and gate-up matrices), with an SPM vocabulary of byte tokens and
64 words, so that llama.cpp and the MLX loader can both run them. Used by
the cross-engine architecture tests and the fallback tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 4, 2, 16, 96
BYTES = [f"<0x{b:02X}>" for b in range(256)]
TOKENS = ["<unk>", "<s>", "</s>", *BYTES, *(f"w{i}" for i in range(64))]
VOCAB = len(TOKENS)
CONTEXT = 512
PROBE = [1, 40, 90, 300, 7, 120, 250, 33, 301, 64, 18, 200]

#: Layers per architecture: Gemma 3 needs six for one global layer among its
#: sliding-window ones.
LAYERS = {"gemma3": 6}
#: Metadata beyond the common keys, as llama.cpp's converter writes it.
EXTRA_KV: dict[str, dict[str, Any]] = {
    "gpt2": {"attention.layer_norm_epsilon": 1e-5, "attention.head_count_kv": HEADS},
    "gemma2": {
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        # Longer than the probe: mlx-lm's gemma2 model has no sliding window.
        "attention.sliding_window": 256,
    },
    "gemma3": {
        # Shorter than the probe, so that the local layers' window matters.
        "attention.sliding_window": 5,
        "rope.freq_base": 1_000_000.0,
    },
}


def tensors(arch: str, seed: int, *, fused: bool = True) -> dict[str, Any]:
    """GGUF name -> float32 array (rows, columns), as llama.cpp's converter writes them."""
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n: int) -> Any:
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t: dict[str, Any] = {
        "token_embd.weight": mat(VOCAB, HIDDEN),
        "output_norm.weight": norm(HIDDEN),
    }
    if arch == "gpt2":  # an architecture the MLX loader does not map
        return _gpt2(t, mat, norm)
    if not arch.startswith("gemma"):  # Gemma's output is its embedding
        t["output.weight"] = mat(VOCAB, HIDDEN)
    q_rows, kv_rows = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS.get(arch, 2)):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(HIDDEN)
        t[p + "ffn_norm.weight"] = norm(HIDDEN)
        if arch == "phi3" and fused:
            t[p + "attn_qkv.weight"] = mat(q_rows + 2 * kv_rows, HIDDEN)
        else:
            t[p + "attn_q.weight"] = mat(q_rows, HIDDEN)
            t[p + "attn_k.weight"] = mat(kv_rows, HIDDEN)
            t[p + "attn_v.weight"] = mat(kv_rows, HIDDEN)
        if arch == "phi3":
            t[p + "ffn_up.weight"] = mat(2 * FFN, HIDDEN)
        else:
            t[p + "ffn_gate.weight"] = mat(FFN, HIDDEN)
            t[p + "ffn_up.weight"] = mat(FFN, HIDDEN)
        t[p + "attn_output.weight"] = mat(HIDDEN, q_rows)
        t[p + "ffn_down.weight"] = mat(HIDDEN, FFN)
        if arch == "qwen2":
            for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                t[p + f"attn_{name}.bias"] = (0.2 * rng.standard_normal(rows)).astype(np.float32)
        if arch in ("qwen3", "gemma3"):
            t[p + "attn_q_norm.weight"] = norm(HEAD_DIM)
            t[p + "attn_k_norm.weight"] = norm(HEAD_DIM)
        if arch.startswith("gemma"):
            t[p + "post_attention_norm.weight"] = norm(HIDDEN)
            t[p + "post_ffw_norm.weight"] = norm(HIDDEN)
    return t


def _gpt2(t: dict[str, Any], mat: Any, norm: Any) -> dict[str, Any]:
    def bias(n: int) -> Any:
        return (0.1 * norm(n) - 0.1).astype(np.float32)

    t["position_embd.weight"] = mat(CONTEXT, HIDDEN)
    t["output_norm.bias"] = bias(HIDDEN)
    for i in range(2):
        p = f"blk.{i}."
        for name, rows, cols in (
            ("attn_qkv", 3 * HIDDEN, HIDDEN),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_up", FFN, HIDDEN),
            ("ffn_down", HIDDEN, FFN),
        ):
            t[p + f"{name}.weight"] = mat(rows, cols)
            t[p + f"{name}.bias"] = bias(rows)
        for name in ("attn_norm", "ffn_norm"):
            t[p + f"{name}.weight"] = norm(HIDDEN)
            t[p + f"{name}.bias"] = bias(HIDDEN)
    return t


def write_tiny(
    path: Path, arch: str, seed: int = 0, *, kv: dict[str, Any] | None = None, fused: bool = True
) -> Path:
    """Write the tiny ``arch`` model; ``kv`` adds or replaces ``{arch}.*`` metadata,
    and ``fused=False`` writes Phi-3's Q, K and V as three matrices."""
    writer = gguf.GGUFWriter(str(path), arch)
    values: dict[str, Any] = {
        "block_count": LAYERS.get(arch, 2),
        "context_length": CONTEXT,
        "embedding_length": HIDDEN,
        "feed_forward_length": FFN,
        "attention.head_count": HEADS,
        "attention.head_count_kv": KV_HEADS,
        "attention.key_length": HEAD_DIM,
        "attention.value_length": HEAD_DIM,
        "rope.dimension_count": HEAD_DIM,
        "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
        **EXTRA_KV.get(arch, {}),
        **(kv or {}),
    }
    for key, value in values.items():
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", TOKENS)
    writer.add_array(
        "tokenizer.ggml.scores", [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(64)]
    )
    writer.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * 64)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    for name, value in tensors(arch, seed, fused=fused).items():
        writer.add_tensor(name, value)
    write_out(writer)
    return path


def write_out(writer: Any) -> None:
    """Write a gguf-py ``GGUFWriter``'s header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_cpp_logits(path: Path, ids: list[int]) -> Any:
    import llama_cpp

    f32 = int(llama_cpp.GGML_TYPE_F32)
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=64,
        n_batch=64,
        n_threads=2,
        logits_all=True,
        type_k=f32,
        type_v=f32,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
