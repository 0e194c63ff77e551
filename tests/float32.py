"""How closely two float32 computations of the same function agree when they may run on different kernels.

Bit-equality is a promise of the same code on the same machine. Two code paths (numpy's BLAS and torch's
MKL/oneDNN, a batch against one row at a time, two devices) compute the same sums of products in orders that
each library picks at run time from the CPU it finds, so they agree to rounding, not bit for bit. A sum of K
float32 terms, in any order, is within gamma_K * sum|terms| of the exact sum, gamma_K = K u / (1 - K u), with the
unit roundoff u = 2**-24 (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 2002, section 3.1).
`mlp_error_bound` carries that bound through an MLP's layers; two computations of it differ by at most twice it.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-24
# tanh, exp and the like are not correctly rounded; numpy's and torch's are within a few units in the last place.
ELEMENTWISE_ULPS = 4


def sum_bound(terms: int) -> float:
    """gamma_K: the error bound of a K-term float32 sum, relative to the sum of its terms' magnitudes."""
    return terms * UNIT_ROUNDOFF / (1 - terms * UNIT_ROUNDOFF)


def mlp_error_bound(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """A bound on |computed - exact| of each output of the MLP x -> act(x W_1 + b_1) ... W_L + b_L (weights
    [in, out], 1-Lipschitz activations with |act(z)| <= |z|, such as tanh and relu) computed in float32 in any
    summation order: per layer, the input's error through |W| plus gamma_{in+1} times the magnitudes summed, plus
    the activation's own rounding."""
    magnitude = np.abs(x.astype(np.float64))
    error = np.zeros_like(magnitude)
    for i, (w, b) in enumerate(layers):
        w_abs, b_abs = np.abs(w.astype(np.float64)), np.abs(b.astype(np.float64))
        magnitude = magnitude @ w_abs + b_abs  # bounds the pre-activations' terms summed (and the outputs)
        error = error @ w_abs + sum_bound(w.shape[0] + 1) * magnitude
        if i < len(layers) - 1:
            error = error + ELEMENTWISE_ULPS * UNIT_ROUNDOFF * magnitude
    return error
