"""gpubp.params: the constraint language, the table, and one wording for a bad value in every face."""

import math
from dataclasses import fields

import numpy as np
import pytest

from gpubp import TrainConfig, cli
from gpubp.cli_parser import build_parser
from gpubp.estimator_params import PARAMETER_CONSTRAINTS
from gpubp.constraints import Boolean, FilePath, FloatDType, Interval, NoneValue, Options, Widths
from gpubp.params import SETTINGS, ParameterError, accepts, check, check_all, from_text


@pytest.mark.parametrize(
    "interval, inside, outside, words",
    [
        (Interval(int, 1), [1, np.int64(7), 10**12], [0, -1, 1.0, True, "2", None], "an int in the range [1, inf)"),
        (Interval(float, 0, math.inf, "neither"), [1e-300, 3, np.float32(0.5)], [0, -1e-9, math.inf, math.nan, False],
         "a float in the range (0.0, inf)"),
        (Interval(float, 0, 1, "both"), [0, 0.5, 1], [-0.1, 1.0001], "a float in the range [0.0, 1.0]"),
        (Interval(float, 0, 1, "left"), [0, 0.999], [1, 1.0, -0.0001], "a float in the range [0.0, 1.0)"),
        (Interval(float, 0, 1, "right"), [1, 1e-9], [0, 2], "a float in the range (0.0, 1.0]"),
        (Interval(float), [-math.inf, 0.0, 5], [math.nan], "a float in the range [-inf, inf)"),
    ],
)
def test_intervals(interval, inside, outside, words):
    assert [v for v in inside if not interval.accepts(v)] == []
    assert [v for v in outside if interval.accepts(v)] == []
    assert interval.describe() == words


def test_the_other_constraints():
    assert Options(("a", "b")).accepts("b") and not Options(("a", "b")).accepts("c")
    assert not Options(("a",)).accepts(["a"])  # unhashable values are refused, not an error
    assert Options((0, 1, 2)).describe() == "one of {0, 1, 2}"
    assert Boolean().accepts(np.bool_(True)) and not Boolean().accepts(1)
    assert NoneValue().accepts(None) and not NoneValue().accepts(0)
    assert Widths().accepts([]) and Widths().accepts((3, np.int32(2))) and not Widths().accepts([3, 0])
    assert not Widths().accepts("12") and not Widths().accepts([2.0])
    assert FloatDType().accepts(np.float32) and FloatDType().accepts("float64")
    assert not FloatDType().accepts("float16") and not FloatDType().accepts(None) and not FloatDType().accepts("x")
    assert FilePath().accepts("c.npz") and not FilePath().accepts("/no/such/folder/c.npz")
    assert not FilePath().accepts("") and not FilePath().accepts(3)


def test_check_normalizes_and_names_the_setting_its_range_and_the_value(tmp_path):
    assert check("epochs", np.int64(3)) == 3 and type(check("epochs", np.int64(3))) is int
    assert check("lr", 1) == 1.0 and type(check("lr", 1)) is float
    assert check("checkpoint", tmp_path / "c.npz") == str(tmp_path / "c.npz")
    assert check("dtype", np.float32) == "float32" and check("hidden", (4, 2)) == [4, 2]
    with pytest.raises(ParameterError) as caught:
        check("patience", 0)
    assert str(caught.value) == "patience must be an int in the range [1, inf) or None, got 0"
    assert (caught.value.name, caught.value.value) == ("patience", 0) and isinstance(caught.value, ValueError)
    with pytest.raises(ParameterError, match=r"^warmup_epochs must be an int in the range \[0, inf\), got -1$"):
        check_all({"epochs": 3, "warmup_epochs": -1, "lr": -1})  # the first bad one, in order
    assert accepts("lr", 0.1) and not accepts("lr", 0)
    with pytest.raises(KeyError, match="'learning_rate' is not a gpubp setting"):
        check("learning_rate", 0.1)


@pytest.mark.parametrize(
    "name, text, value",
    [("lr", "-1", -1), ("lr", "0.5", 0.5), ("lr", "x", "x"), ("epochs", "1.5", "1.5"), ("seed", "none", None),
     ("seed", "4", 4), ("patience", "0", 0), ("hidden", "256, 128", [256, 128]), ("hidden", "none", []),
     ("hidden", "12,x", "12,x"), ("verbose", "2", 2), ("stream", "True", True), ("optimizer", "sgd", "sgd")],
)
def test_from_text_reads_what_the_text_stands_for(name, text, value):
    got = from_text(name, text)
    assert got == value and type(got) is type(value)


def test_every_setting_has_a_description_and_words_for_its_range():
    for name, setting in SETTINGS.items():
        assert setting.description and setting.constraints, name
        assert " must be " not in setting.allowed()


def _bad_value(name):
    """A value every constraint of the setting refuses: below an interval, or a name not offered."""
    first = SETTINGS[name].constraints[0]
    if isinstance(first, Interval):
        return first.kind(first.low - 1)
    if isinstance(first, FilePath):
        return "/no/such/folder/c.npz"
    return "bogus"


def _options_of_settings():
    """{setting: option} for the options of ``gpubp train`` that are typed by a setting."""
    return build_parser().commands["train"].settings


SHARED = sorted(set(_options_of_settings()) & {f.name for f in fields(TrainConfig)})


def test_the_command_line_and_train_config_share_the_training_settings():
    assert {"epochs", "batch_size", "optimizer", "lr", "momentum", "schedule", "warmup_epochs", "validation_fraction",
            "patience", "seed", "clip_norm", "checkpoint", "checkpoint_every"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_a_bad_value_reads_the_same_on_the_command_line_and_in_train_config(name, capsys):
    """gpubp train --OPTION BAD prints, after argparse's "argument --OPTION: ", the very sentence
    that TrainConfig (so gpubp.fit) raises for the same value."""
    value = _bad_value(name)
    with pytest.raises(ParameterError) as caught:
        TrainConfig(**{name: value})
    option = _options_of_settings()[name]
    assert cli.main(["train", option, str(value)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: gpubp train: argument {option}: {caught.value}\n"


# The gpubp settings whose range scikit-learn's MLP has too, under its own name.
SAME_RANGE = {"momentum": "momentum", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon", "alpha": "alpha",
              "validation_fraction": "validation_fraction", "batch_size": "batch_size", "epochs": "max_iter",
              "lr": "learning_rate_init"}


@pytest.mark.parametrize("ours, theirs", SAME_RANGE.items())
def test_ranges_shared_with_the_estimators_agree(ours, theirs):
    """The estimators check with scikit-learn's table (its words and exception class are required);
    over finite numbers a setting both have accepts the same values in both tables.
    (scikit-learn also takes inf for a float range open to infinity, and True for an int range.)"""
    from sklearn.utils._param_validation import make_constraint

    constraints = [make_constraint(c) for c in PARAMETER_CONSTRAINTS[theirs]]
    for value in (-1, -1e-12, 0, 0.0, 1e-12, 0.5, 1, 1.0, 1.5, 2, 10**6):
        try:
            check(ours, value)
            accepted = True
        except ParameterError:
            accepted = False
        assert accepted == any(c.is_satisfied_by(value) for c in constraints), (ours, value)
