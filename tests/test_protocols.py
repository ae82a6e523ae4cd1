"""Every Protocol of the package and its implementations.

mypy checks the typed tuples below (CI runs `mypy w2v_jax tests/test_protocols.py`): each class
implements its protocol. The tests check what mypy allows to differ: each implementation declares
every method of its protocol with the protocol's parameters (names, kinds, defaults) and annotations
(where the protocol leaves a type open with `Any`, any), and holds each of its attributes.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest
from flax import nnx

from w2v_jax.asr.beam_search import BeamSearchDecoder
from w2v_jax.asr.decoding import CTCDecoder, GreedyDecoder
from w2v_jax.asr.evaluator import CTCEvaluator
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.asr.task import CTCAllBlank, FineTuningTask
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, Wav2Vec2Model
from w2v_jax.pretraining.evaluator import PretrainingEvaluator
from w2v_jax.pretraining.objective import PretrainingObjective
from w2v_jax.pretraining.task import CodebookCollapse, PretrainingTask, TrivialSolution
from w2v_jax.representations import EncoderModel
from w2v_jax.research.plotting import PhoneProbeResults
from w2v_jax.research.probes import PhoneProbeReport
from w2v_jax.training.evaluation import Evaluator
from w2v_jax.training.health import Detector, Divergence, GradNormCollapse
from w2v_jax.training.train_step import ModelClass, Objective
from w2v_jax.training.trainer import Task

TASKS: tuple[type[Task], ...] = (PretrainingTask, FineTuningTask)
OBJECTIVES: tuple[type[Objective], ...] = (PretrainingObjective, CTCObjective)
DETECTORS: tuple[type[Detector], ...] = (GradNormCollapse, Divergence, CodebookCollapse, TrivialSolution, CTCAllBlank)
EVALUATORS: tuple[type[Evaluator], ...] = (PretrainingEvaluator, CTCEvaluator)
DECODERS: tuple[type[CTCDecoder], ...] = (GreedyDecoder, BeamSearchDecoder)
ENCODER_MODELS: tuple[type[EncoderModel], ...] = (Wav2Vec2ForPreTraining, Wav2Vec2ForCTC)
PHONE_PROBE_RESULTS: tuple[type[PhoneProbeResults], ...] = (PhoneProbeReport,)
# A model class is a callable protocol: the classes themselves implement it.
MODEL_CLASSES: tuple[ModelClass, ...] = (Wav2Vec2ForPreTraining, Wav2Vec2ForCTC, Wav2Vec2Model)

IMPLEMENTATIONS: list[tuple[Any, tuple[type, ...]]] = [
    (Task, TASKS),
    (Objective, OBJECTIVES),
    (Detector, DETECTORS),
    (Evaluator, EVALUATORS),
    (CTCDecoder, DECODERS),
    (EncoderModel, ENCODER_MODELS),
    (PhoneProbeResults, PHONE_PROBE_RESULTS),
]
CASES = [(protocol, cls) for protocol, classes in IMPLEMENTATIONS for cls in classes]


def _members(protocol: type) -> tuple[list[str], list[str]]:
    """(method names, attribute names) the protocol declares itself."""
    methods = [
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and (name == "__call__" or not name.startswith("__"))
    ]
    attributes = [name for name, value in vars(protocol).items() if isinstance(value, property)]
    attributes += [name for name in vars(protocol).get("__annotations__", {}) if not name.startswith("_")]
    return methods, attributes


def _matches(expected: Any, got: Any) -> bool:
    """`got` is the annotation `expected`, where `Any` in `expected` (a type the protocol leaves open)
    matches anything."""
    if expected is Any:
        return True
    expected_args, got_args = typing.get_args(expected), typing.get_args(got)
    if expected_args and typing.get_origin(expected) == typing.get_origin(got) and len(expected_args) == len(got_args):
        return all(_matches(e, g) for e, g in zip(expected_args, got_args))
    return expected == got


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize(("protocol", "cls"), CASES, ids=[f"{p.__name__}-{c.__name__}" for p, c in CASES])
def test_an_implementation_declares_its_protocol_exactly(protocol, cls):
    methods, attributes = _members(protocol)
    assert methods or attributes
    for name in methods:
        expected, got = getattr(protocol, name), getattr(cls, name)
        assert _parameters(got) == _parameters(expected), f"{cls.__name__}.{name}"
        expected_hints, got_hints = typing.get_type_hints(expected), typing.get_type_hints(got)
        assert expected_hints.keys() == got_hints.keys(), f"{cls.__name__}.{name}"
        for key, hint in expected_hints.items():
            assert _matches(hint, got_hints[key]), f"{cls.__name__}.{name}: {key} is {got_hints[key]}, not {hint}"
    for name in attributes:
        assert hasattr(cls, name) or name in _instance_attributes(cls), f"{cls.__name__} lacks {name}"


def _instance_attributes(cls: Any) -> set[str]:
    """The fields of a dataclass, the attributes of a model (built abstractly: shapes only)."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    if issubclass(cls, nnx.Module):
        return set(vars(nnx.eval_shape(lambda: cls(Wav2Vec2Config.preset("tiny")))))
    return set()


@pytest.mark.parametrize("cls", [Wav2Vec2ForPreTraining, Wav2Vec2ForCTC, Wav2Vec2Model], ids=lambda c: c.__name__)
def test_a_model_class_takes_what_the_train_step_passes(cls):
    expected = [name for name, *_ in _parameters(ModelClass.__call__)][1:]
    parameters = inspect.signature(cls.__init__).parameters
    assert all(name in parameters for name in expected), f"{cls.__name__}{inspect.signature(cls)}"
    assert [p.kind for name, p in parameters.items() if name in expected[1:]] == [inspect.Parameter.KEYWORD_ONLY] * 3
