"""An estimator's fitted state as plain numpy arrays: saved as `estimator.npz`, loaded without pickle.

The default state is every fitted attribute (name ending in `_`) that is a plain array. An estimator whose
fitted state does not fit that rule (private attributes, objects such as trees) defines

    state_arrays() -> dict[str, np.ndarray]        # everything predict needs, as plain arrays
    load_state_arrays(state) -> None                # the inverse, on a freshly built (unfitted) estimator

`FittedArraysMixin` implements both for scikit-learn subclasses: the `_`-suffixed arrays plus the private names
listed in `_private_state`, then `_after_load()` rebuilds anything else.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _fitted_arrays(estimator, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    state = {}
    for key, value in vars(estimator).items():
        if (key.endswith("_") and not key.startswith("__")) or key in extra:
            array = np.asarray(value)
            if array.dtype != object:
                state[key] = array
    return state


def _plain(value: np.ndarray) -> Any:
    """A 0-d array back to the Python scalar scikit-learn stored (ints, strings, bools)."""
    return value.item() if value.ndim == 0 else value


def estimator_state(estimator) -> dict[str, np.ndarray]:
    """Fitted state as plain arrays (saved as npz, loaded without pickle)."""
    if hasattr(estimator, "state_arrays"):
        return estimator.state_arrays()
    return _fitted_arrays(estimator)


def load_estimator_state(estimator, state: Mapping[str, np.ndarray]):
    """Restore `estimator_state` output into a freshly built estimator of the same config; returns it."""
    if hasattr(estimator, "load_state_arrays"):
        estimator.load_state_arrays(state)
    else:
        for key, value in state.items():
            setattr(estimator, key, _plain(np.asarray(value)))
    return estimator


class FittedArraysMixin:
    """`state_arrays` / `load_state_arrays` for a scikit-learn subclass (put it first among the bases)."""

    _private_state: tuple[str, ...] = ()

    def state_arrays(self) -> dict[str, np.ndarray]:
        return _fitted_arrays(self, self._private_state)

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        for key, value in state.items():
            setattr(self, key, _plain(np.asarray(value)))
        self._after_load()

    def _after_load(self) -> None:
        """Rebuild what the arrays do not hold (default: nothing)."""
