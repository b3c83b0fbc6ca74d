"""fedcore.plugins.Registry: the one shape behind the aggregator, model, task, algorithm and attack
registries."""

from __future__ import annotations

import pytest

from fedcore.errors import UnknownNameError
from fedcore.models import model_builder, model_names
from fedcore.plugins import Registry
from fedcore.tasks.base import task_class


def test_a_name_is_held_once_case_and_spaces_aside() -> None:
    reg: Registry[object] = Registry("widget", fix="Register yours with register_widget(name, obj)")
    a, b = object(), object()
    assert reg.register(" Alpha ", a) is a
    assert reg.register("alpha", a) is a  # the same item again: a plug-in module imported twice
    with pytest.raises(ValueError, match="'alpha' is already registered"):
        reg.register("ALPHA", b)
    assert reg.register("alpha", b, force=True) is b and reg.get("Alpha") is b
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("  ", a)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'beta'; known widgets: alpha\. Register"):
        reg.get("beta")


def test_the_builtin_registries_share_it() -> None:
    assert {"logreg", "mlp"} <= set(model_names()) and model_builder("LogReg") is model_builder("logreg")
    assert task_class(" Binary") is task_class("binary")
    with pytest.raises(UnknownNameError, match=r"known models: .*logreg"):
        model_builder("nope")
