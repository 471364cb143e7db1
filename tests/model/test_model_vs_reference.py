"""The plugin, served by real vLLM engines on the CPU, against the independent float64 reference.

Each engine starts once per module (10-25 s each) and runs every prompt with greedy decoding and
full-vocabulary log-probs; the tests then compare numbers. Tolerance: 1e-4 in log-probability (float32
engines).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from grok_engines import MAX_TOKENS, PROMPTS, run_engine
from grok_reference import Grok1Reference, Traits

from grok_server.checkpoints.convert import convert
from grok_server.checkpoints.tiny import make_tiny_checkpoint

TOLERANCE = 1e-4
# A trait "breaks the match" when switching it off moves some log-prob by well over the tolerance.
BROKEN = 3 * TOLERANCE
TRAITS = [field.name for field in dataclasses.fields(Traits)]
ORIGINAL = Traits()

# Every non-default knob at once, on the other naming and the .bin format: untied head, router cap,
# renormalised gates, exact GELU.
VARIANT_CONFIG = {
    "tie_word_embeddings": False,
    "router_logit_softcapping": 3.0,
    "router_renormalize": True,
    "hidden_act": "gelu",
}
VARIANT_DEFAULTS = {
    "tie_word_embeddings": True,
    "router_logit_softcapping": 0.0,
    "router_renormalize": False,
    "hidden_act": "gelu_tanh",
}


class ReferenceRuns:
    """Reference log-probs for what an engine produced, cached per prompt and trait set."""

    def __init__(self, reference: Grok1Reference, engine: dict[str, np.ndarray]) -> None:
        self.reference = reference
        self.engine = engine

    def engine_rows(self, i: int) -> np.ndarray:
        return np.concatenate([self.engine[f"prompt{i}"], self.engine[f"generated{i}"]])

    @functools.cache  # noqa: B019 - instances live for a test module
    def reference_rows(self, i: int, traits: Traits) -> np.ndarray:
        prompt, generated = PROMPTS[i], list(self.engine[f"tokens{i}"])
        # Row t is the distribution of the token after the first t + 1 tokens: the prompt's rows from its
        # second token on, then one row per generated token.
        logprobs = self.reference.logprobs(prompt + generated[:-1], traits).numpy()
        return logprobs

    def max_abs_diff(self, traits: Traits = ORIGINAL) -> float:
        return max(
            float(np.abs(self.engine_rows(i) - self.reference_rows(i, traits)).max())
            for i in range(len(PROMPTS))
        )


@pytest.fixture(scope="module")
def reference(tiny_grok_checkpoint: Path) -> Grok1Reference:
    return Grok1Reference(tiny_grok_checkpoint)


@pytest.fixture(scope="module")
def tp1(
    tiny_grok_checkpoint: Path, reference: Grok1Reference, tmp_path_factory: pytest.TempPathFactory
) -> ReferenceRuns:
    return ReferenceRuns(reference, run_engine(tmp_path_factory.mktemp("engine-tp1"), tiny_grok_checkpoint))


@pytest.fixture(scope="module")
def converted_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint's weights written as an xAI ckpt-0, then converted by grok-convert.

    test_convert.py proves its tensors equal the directly written checkpoint's bit for bit; here it is
    served at tensor parallel size 2 (one engine start for both checks: engines are the slow part).
    """
    root = tmp_path_factory.mktemp("converted")
    original = make_tiny_checkpoint(root / "xai", fmt="xai")
    overrides = {"max_position_embeddings": 2048}
    return convert(
        original,
        root / "hf",
        dtype="float32",
        head_dim=32,
        tokenizer_dir=original,
        config_overrides=overrides,
        log=lambda _: None,
    ).output


@pytest.fixture(scope="module")
def tp2(
    converted_checkpoint: Path, reference: Grok1Reference, tmp_path_factory: pytest.TempPathFactory
) -> ReferenceRuns:
    engine = run_engine(tmp_path_factory.mktemp("engine-tp2"), converted_checkpoint, tensor_parallel_size=2)
    return ReferenceRuns(reference, engine)


@pytest.fixture(scope="module", params=["tp1", "tp2"])
def runs(request: pytest.FixtureRequest) -> ReferenceRuns:
    return request.getfixturevalue(request.param)


def test_logprobs_match_reference(runs: ReferenceRuns) -> None:
    diff = runs.max_abs_diff()
    print(f"max |dlogprob| vs reference: {diff:.3g}")
    assert diff < TOLERANCE


def test_greedy_continuations_match_reference(runs: ReferenceRuns) -> None:
    for i, prompt in enumerate(PROMPTS):
        assert list(runs.engine[f"tokens{i}"]) == runs.reference.greedy(prompt, MAX_TOKENS), f"prompt {i}"
    # Not a degenerate model that repeats one token: the continuations carry information.
    assert len({int(t) for i in range(len(PROMPTS)) for t in runs.engine[f"tokens{i}"]}) > MAX_TOKENS


@pytest.mark.parametrize("trait", TRAITS)
def test_every_trait_is_live(runs: ReferenceRuns, trait: str) -> None:
    """Switching one trait off in the reference breaks the match: the engine really implements it."""
    diff = runs.max_abs_diff(Traits(**{trait: False}))
    print(f"{trait} off: max |dlogprob| {diff:.3g}")
    assert diff > BROKEN


def test_tensor_parallel_2_agrees_with_1(tp1: ReferenceRuns, tp2: ReferenceRuns) -> None:
    """Also: the converted ckpt-0 (served at TP=2) generates what the directly written weights (TP=1) do."""
    for i in range(len(PROMPTS)):
        assert list(tp1.engine[f"tokens{i}"]) == list(tp2.engine[f"tokens{i}"])
        np.testing.assert_allclose(tp1.engine_rows(i), tp2.engine_rows(i), atol=TOLERANCE, rtol=0)


# --- the variant knobs, Mixtral-style naming, .bin weights ----------------------------------------


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRuns:
    root = tmp_path_factory.mktemp("variant")
    served = make_tiny_checkpoint(root / "mixtral-bin", naming="mixtral", fmt="bin", **VARIANT_CONFIG)
    # The reference reads hpcai safetensors: the generator gives the same weights in every naming and format.
    reference_ckpt = make_tiny_checkpoint(root / "hpcai", naming="hpcai", fmt="hf", **VARIANT_CONFIG)
    engine = run_engine(root / "engine", served)
    return ReferenceRuns(Grok1Reference(reference_ckpt), engine)


def test_variant_config_matches_reference(variant: ReferenceRuns) -> None:
    diff = variant.max_abs_diff()
    print(f"variant config: max |dlogprob| vs reference: {diff:.3g}")
    assert diff < TOLERANCE
    for i, prompt in enumerate(PROMPTS):
        assert list(variant.engine[f"tokens{i}"]) == variant.reference.greedy(prompt, MAX_TOKENS)


@pytest.mark.parametrize("knob", sorted(VARIANT_CONFIG))
def test_every_variant_knob_is_live(variant: ReferenceRuns, knob: str) -> None:
    """The reference with one knob back at its default no longer matches: the plugin honours each knob."""
    runs = ReferenceRuns(variant.reference.with_config(**{knob: VARIANT_DEFAULTS[knob]}), variant.engine)
    diff = runs.max_abs_diff()
    print(f"{knob} reverted: max |dlogprob| {diff:.3g}")
    assert diff > BROKEN
