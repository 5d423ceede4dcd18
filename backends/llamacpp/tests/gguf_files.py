"""Small GGUF files written by the tests: a tiny random llama, a tiny random
Mamba, a LoRA adapter, and a tiny random Gemma 3 (the MLX tests' writer, with
a window of one's choice).

The tiny llama and Mamba borrow SmolLM2's real tokenizer, so llama.cpp loads and runs
it; its weights are random, so its output is noise, but it is enough to test
chat templates, loading and adapters without a second real model.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from inference.gguf import read_header  # noqa: E402


def _tokenizer(
    w: gguf.GGUFWriter,
    source: str,
    control: Sequence[str] = (),
    *,
    model: str | None = None,
    untyped: bool = False,
) -> None:
    """``source``'s tokenizer; ``control`` replaces its last tokens with
    these control tokens (another family's turn markers, say); ``model``
    names another tokenizer model, ``untyped`` gives every token type 0."""
    h = read_header(source)
    tokens = list(h.get("tokenizer.ggml.tokens"))
    types = [0] * len(tokens) if untyped else list(h.get("tokenizer.ggml.token_type"))
    for i, text in enumerate(control, start=len(tokens) - len(control)):
        tokens[i], types[i] = text, 3  # 3: control
    w.add_tokenizer_model(model or h.get("tokenizer.ggml.model"))
    w.add_tokenizer_pre(h.get("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(list(h.get("tokenizer.ggml.merges")))
    w.add_bos_token_id(h.get("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(h.get("tokenizer.ggml.eos_token_id"))
    w.add_add_bos_token(False)


def write_tiny_llama(
    path: Path,
    source: str,
    *,
    chat_template: str | None = None,
    n_embd: int = 64,
    n_ff: int = 128,
    seed: int = 0,
    control_tokens: Sequence[str] = (),
    block_count: int = 1,
    context_length: int = 256,
    rms_eps: float = 1e-5,
    freq_base: float = 10000.0,
    tokenizer_model: str | None = None,
    untyped_tokens: bool = False,
) -> Path:
    """A one-layer llama with random weights and ``source``'s tokenizer.
    The keyword arguments after ``control_tokens`` craft what its header says
    (a hostile file's values, for the checks made before llama.cpp loads it)."""
    rng = np.random.default_rng(seed)
    vocab = len(read_header(source, load_arrays=False).get("tokenizer.ggml.tokens"))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(block_count)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(n_embd // 4)
    w.add_rope_freq_base(freq_base)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_file_type(1)
    _tokenizer(w, source, control_tokens, model=tokenizer_model, untyped=untyped_tokens)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    kv = n_embd // 2
    w.add_tensor("token_embd.weight", mat(vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", mat(n_embd, n_embd))
    w.add_tensor("blk.0.attn_k.weight", mat(kv, n_embd))
    w.add_tensor("blk.0.attn_v.weight", mat(kv, n_embd))
    w.add_tensor("blk.0.attn_output.weight", mat(n_embd, n_embd))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", mat(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", mat(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_mamba(
    path: Path, source: str, *, n_embd: int = 64, block_count: int = 2, seed: int = 5
) -> Path:
    """A tiny Mamba (a recurrent model: its state cannot be trimmed back to
    a shorter prefix) with random weights and ``source``'s tokenizer, laid
    out as llama.cpp loads one (``models/mamba.cpp``)."""
    rng = np.random.default_rng(seed)
    vocab = len(read_header(source, load_arrays=False).get("tokenizer.ggml.tokens"))
    d_inner, d_state, d_conv, dt_rank = 2 * n_embd, 8, 4, 4
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_name("tiny test mamba")
    w.add_block_count(block_count)
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    _tokenizer(w, source)

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(block_count):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"{b}.ssm_in.weight", mat(2 * d_inner, n_embd))
        w.add_tensor(f"{b}.ssm_conv1d.weight", mat(d_inner, d_conv))
        w.add_tensor(f"{b}.ssm_conv1d.bias", mat(d_inner))
        w.add_tensor(f"{b}.ssm_x.weight", mat(dt_rank + 2 * d_state, d_inner))
        w.add_tensor(f"{b}.ssm_dt.weight", mat(d_inner, dt_rank))
        w.add_tensor(f"{b}.ssm_dt.bias", mat(d_inner))
        # A = -exp(A_log): negative, so that the state decays.
        w.add_tensor(f"{b}.ssm_a", -np.exp(mat(d_inner, d_state)))
        w.add_tensor(f"{b}.ssm_d", np.ones(d_inner, dtype=np.float32))
        w.add_tensor(f"{b}.ssm_out.weight", mat(n_embd, d_inner))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_lora(path: Path, base: str, *, rank: int = 8, scale: float = 0.5, seed: int = 1) -> Path:
    """A random LoRA adapter for ``base`` on every attention output projection."""
    h = read_header(base, load_arrays=False)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), h.architecture)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for t in h.tensors:
        if not t.name.endswith("attn_output.weight"):
            continue
        n_in, n_out = t.shape  # ggml order: ne0 = inputs, ne1 = outputs
        a = (rng.standard_normal((rank, n_in)) * scale).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * scale).astype(np.float32)
        w.add_tensor(t.name + ".lora_a", a)
        w.add_tensor(t.name + ".lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_gemma3(path: Path, *, window: int, context: int, seed: int = 3) -> Path:
    """A six-layer Gemma 3 with random weights (five sliding-window layers of
    ``window`` tokens, one global), written by the MLX tests' tiny-model writer."""
    tiny = sys.modules.get("tiny_gguf")
    if tiny is None:
        where = Path(__file__).resolve().parents[2] / "mlx" / "tests" / "tiny_gguf.py"
        spec = importlib.util.spec_from_file_location("tiny_gguf", where)
        assert spec is not None and spec.loader is not None
        tiny = importlib.util.module_from_spec(spec)
        sys.modules["tiny_gguf"] = tiny
        spec.loader.exec_module(tiny)
    kv = {"context_length": context, "attention.sliding_window": window}
    written: Path = tiny.write_tiny(path, "gemma3", seed, kv=kv)
    return written
