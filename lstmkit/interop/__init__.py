"""Moving models between lstmkit and other libraries (Keras 3 so far)."""

from .keras import from_keras

__all__ = ["from_keras"]
