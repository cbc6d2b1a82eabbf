"""gpubp's settings and their allowed values, in one table, checked by one function.

Every setting that :func:`gpubp.fit` (:class:`gpubp.TrainConfig`), the optimizers, the network's
dtype and the ``gpubp`` command take is a row of :data:`SETTINGS`: its constraints (any one of them
may accept a value) and a one-line description. :func:`check` is the only place a value is judged,
so a bad value gives the same words wherever it enters (the constraints are gpubp.constraints)::

    >>> check("lr", -1)
    Traceback (most recent call last):
    gpubp.params.ParameterError: lr must be a float in the range (0.0, inf), got -1

The command line converts its text with :func:`from_text` and then calls :func:`check`, so
``gpubp train --lr -1`` ends with the same sentence. The ranges are written as scikit-learn
writes them in its own messages ("an int in the range [1, inf)"), so they also read like the
messages of gpubp.MLPClassifier, which must stay scikit-learn's own (see gpubp.estimator_params).
Rules between settings (warmup_epochs <= epochs, ...) stay with the code that has both values.
"""

from __future__ import annotations

import math

from .constraints import (NOT_READ, Boolean, FilePath, FloatDType, Instances, Interval, NoneValue, Options, Setting,
                          Widths)
from .ops import ACTIVATIONS
from .schedules import SCHEDULES

OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov")


class ParameterError(ValueError):
    """A setting outside its allowed values: "<name> must be <allowed>, got <value>"."""

    def __init__(self, name: str, value, allowed: str):
        super().__init__(f"{name} must be {allowed}, got {value!r}")
        self.name, self.value, self.allowed = name, value, allowed


def _positive_int(description: str, or_none: bool = False) -> Setting:
    return Setting((Interval(int, 1),) + ((NoneValue(),) if or_none else ()), description)


def _fraction(description: str) -> Setting:
    return Setting((Interval(float, 0, 1, "left"),), description)


_POSITIVE = Interval(float, 0, math.inf, "neither")

SETTINGS: dict[str, Setting] = {
    # training (TrainConfig, the arguments of gpubp.fit)
    "epochs": _positive_int("passes over the training data"),
    "batch_size": _positive_int("samples per gradient step (the global batch of a data-parallel run)"),
    "optimizer": Setting((Options(OPTIMIZERS), Instances("gpubp.optim", ("SGD", "Adam"))),
                         "update rule, by name or as a configured optimizer object"),
    "lr": Setting((_POSITIVE,), "peak learning rate"),
    "schedule": Setting((Options(SCHEDULES),), "how the learning rate changes over the steps"),
    "warmup_epochs": Setting((Interval(int, 0),), "epochs over which the rate rises linearly to lr"),
    "validation_fraction": _fraction("share of the training rows held out to monitor training"),
    "patience": _positive_int("epochs without improvement before stopping early", or_none=True),
    "min_delta": Setting((Interval(float, 0),), "smallest decrease of the monitored loss that counts"),
    "restore_best": Setting((Boolean(),), "end with the parameters of the best epoch"),
    "shuffle": Setting((Boolean(),), "a new order of the training rows every epoch"),
    "seed": Setting((Interval(int, 0), NoneValue()), "seed of the orders and the validation split"),
    "clip_norm": Setting((_POSITIVE, NoneValue()), "largest global L2 norm of the gradient"),
    "checkpoint": Setting((FilePath(), NoneValue()), "checkpoint file written while training"),
    "checkpoint_every": _positive_int("epochs between checkpoint writes", or_none=True),
    "verbose": Setting((Options((0, 1, 2)),), "0 quiet, 1 a line per epoch, 2 a progress bar"),
    "stream": Setting((Boolean(),), "keep the training rows on the host and stream the batches"),
    "cuda_graph": Setting((Boolean(),), "replay each step's forward and backward pass from a CUDA graph"),
    # optimizers (gpubp.SGD, gpubp.Adam)
    "momentum": Setting((Interval(float, 0, 1, "both"),), "velocity kept from step to step (SGD)"),
    "nesterov": Setting((Boolean(),), "Nesterov's look-ahead momentum (SGD)"),
    "beta1": Setting((Interval(float, 0, 1, "left"),), "decay of Adam's first-moment estimate"),
    "beta2": Setting((Interval(float, 0, 1, "left"),), "decay of Adam's second-moment estimate"),
    "eps": Setting((_POSITIVE,), "Adam's term added to the root of the second moment"),
    # the network and the command line
    "hidden": Setting((Widths(),), "widths of the hidden layers"),
    "activation": Setting((Options(ACTIVATIONS),), "activation of the hidden layers"),
    "dtype": Setting((FloatDType(),), "floating-point type of parameters and arithmetic (bfloat16: "
                                      "bfloat16 products and saved activations over float32 parameters)"),
    "alpha": Setting((Interval(float, 0),), "L2 penalty"),
    "test_fraction": _fraction("share held out for the test when the data set has no test part"),
    "pairs": _positive_int("paired runs per library (gpubp bench)"),
    "samples": _positive_int("synthetic samples (gpubp bench)"),
}


def _setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a gpubp setting; known: {', '.join(SETTINGS)}") from None


def check(name: str, value):
    """``value`` of setting ``name``, normalized (an int, a float, a str path, ...).

    Raises
    ------
    ParameterError
        (a ValueError) naming the setting, its allowed values and ``value``.
    """
    setting = _setting(name)
    for constraint in setting.constraints:
        if constraint.accepts(value):
            return constraint.normalize(value)
    raise ParameterError(name, value, setting.allowed())


def accepts(name: str, value) -> bool:
    """Whether setting ``name`` takes ``value`` (for a face that must word the refusal its own way)."""
    return any(c.accepts(value) for c in _setting(name).constraints)


def check_all(values: dict) -> dict:
    """:func:`check` of every item, in order (the first bad one raises); the normalized dict."""
    return {name: check(name, value) for name, value in values.items()}


def from_text(name: str, text: str):
    """The value a command-line text stands for, as the first constraint of ``name`` that reads
    it as its own kind and accepts it makes it (else as the first that reads it, else the text);
    pass the result to :func:`check`, which accepts it or names it in its message."""
    read = [c.from_text(text) for c in _setting(name).constraints]
    read = [(c, v) for c, v in zip(_setting(name).constraints, read) if v is not NOT_READ]
    for constraint, value in read:
        if constraint.accepts(value):
            return value
    return read[0][1] if read else text
