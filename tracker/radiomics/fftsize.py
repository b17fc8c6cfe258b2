"""FFT lengths for the zero-padded convolutions of the radiomics engine."""

from __future__ import annotations


def even_fast_len(n: int) -> int:
    """The smallest even FFT-friendly length >= ``n``."""
    from scipy import fft

    m = fft.next_fast_len(n, real=True)
    while m % 2:
        m = fft.next_fast_len(m + 1, real=True)
    return m
