"""qcc.core.numerics.packing: layout checked by hand, round trips by hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcc.core.numerics import packing as K


def test_layout_is_little_endian_within_a_byte() -> None:
    assert K.pack_bits([1, 0, 1, 1, 0, 0, 0, 1, 1], 1, False).tolist() == [0b10001101, 0b1]
    assert K.pack_bits([1, 2, 3, 0, 3], 2, False).tolist() == [0b00111001, 0b11]
    assert K.pack_bits([-1, 2, -8], 4, True).tolist() == [0x2F, 0x08]
    assert K.pack_bits([-2, 300], 16, True).tolist() == [0xFE, 0xFF, 0x2C, 0x01]
    assert K.pack_bits([-128, 127], 8, True).tolist() == [0x80, 0x7F]


@st.composite
def codes_and_width(draw):
    bits = draw(st.sampled_from(K.WIDTHS))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return draw(st.lists(st.integers(lo, hi), max_size=70)), bits, signed


@given(codes_and_width())
def test_round_trip(case) -> None:
    codes, bits, signed = case
    packed = K.pack_bits(codes, bits, signed)
    assert packed.dtype == np.uint8 and packed.size == K.packed_size(len(codes), bits)
    assert K.unpack_bits(packed, bits, signed, len(codes)).tolist() == codes


@given(codes_and_width())
def test_packed_bytes_match_a_python_bit_string(case) -> None:
    codes, bits, signed = case
    stream = 0
    for i, c in enumerate(codes):  # code i occupies bits [i*bits, (i+1)*bits) of the stream
        stream |= (c & ((1 << bits) - 1)) << (i * bits)
    size = K.packed_size(len(codes), bits)
    assert K.pack_bits(codes, bits, signed).tobytes() == stream.to_bytes(size, "little")


def test_refuses_out_of_range_codes_and_widths() -> None:
    with pytest.raises(ValueError):
        K.pack_bits([8], 4, True)
    with pytest.raises(ValueError):
        K.pack_bits([-1], 2, False)
    with pytest.raises(ValueError):
        K.pack_bits([1], 3, False)
    with pytest.raises(ValueError):
        K.unpack_bits(np.zeros(1, np.uint8), 4, False, 3)
