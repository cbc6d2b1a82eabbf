"""The initial parameters of a network, drawn on the host, the same on every device; and their
layout in one flat buffer."""

from __future__ import annotations

import numpy as np


def init_params(sizes: list[int], activation: str, seed) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Initial weights and biases, drawn on the host in float64.

    Weights are uniform in [-r, r]: He for layers feeding a ReLU, ``r = sqrt(6 / n_in)``, and
    Glorot otherwise (sigmoid, tanh, identity and the softmax layer), ``r = sqrt(6 / (n_in + n_out))``.
    Biases start at zero. One ``numpy.random.default_rng(seed)`` draws layer by layer, so a seed
    gives the same network on every device and dtype (up to the final rounding).

    Returns
    -------
    weights : list of (sizes[l], sizes[l+1]) arrays
    biases : list of (sizes[l+1],) arrays
    """
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    last = len(sizes) - 2
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if activation == "relu" and l < last:
            r = np.sqrt(6.0 / n_in)
        else:
            r = np.sqrt(6.0 / (n_in + n_out))
        weights.append(rng.uniform(-r, r, size=(n_in, n_out)))
        biases.append(np.zeros(n_out))
    return weights, biases


def flat_views(flat, sizes: list[int]) -> tuple[list, list]:
    """Views of a flat (n_params,) array (host or device) as weights (sizes[l], sizes[l+1]) and
    biases (sizes[l+1],): the weights of every layer first, then the biases, each row-major."""
    weights, biases, start = [], [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(flat[start:start + n_in * n_out].reshape(n_in, n_out))
        start += n_in * n_out
    for n_out in sizes[1:]:
        biases.append(flat[start:start + n_out])
        start += n_out
    return weights, biases
