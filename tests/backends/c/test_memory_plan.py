"""The C backend's memory planner (backends/c/memory_plan.py): placements are valid (no two
buffers live at the same step share a byte), the arena is never below the lower bound and
stays within 1.1x of it, and sharing (views, in place, concat slices) is refused whenever it
would clobber a live tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.c import memory_plan
from backends.c.build import build_host, run_host
from backends.c.library import emit_library
from backends.c.memory_plan import ALIGN, Buffer, Slot, Storage, assign_offsets, finish, lower_bound
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model


def overlaps(a: Buffer, b: Buffer) -> bool:
    in_time = a.start <= b.end and b.start <= a.end
    in_space = a.offset < b.offset + b.size and b.offset < a.offset + a.size
    return in_time and in_space


def random_buffers(rng: np.random.Generator, n: int) -> list[Buffer]:
    buffers = []
    for i in range(n):
        start = int(rng.integers(0, 30))
        size = int(rng.choice([8, 64, 512, 4096])) * int(rng.integers(1, 5))
        buffers.append(Buffer(f"b{i}", size, start, start + int(rng.integers(0, 6))))
    return buffers


@pytest.mark.parametrize("seed", range(6))
def test_placement_is_valid_and_near_the_bound(seed: int) -> None:
    buffers = random_buffers(np.random.default_rng(seed), 40)
    arena = assign_offsets(buffers)
    for i, a in enumerate(buffers):
        assert a.offset % ALIGN == 0 and a.offset + a.size <= arena
        for b in buffers[i + 1:]:
            assert not overlaps(a, b), (a, b)
    bound = lower_bound(buffers)
    assert bound <= arena <= 1.1 * bound


def test_chain_reuses_memory() -> None:
    """A chain of layers needs two buffers at a time, not one per tensor."""
    buffers = [Buffer(f"t{i}", 1024, i, i + 1) for i in range(10)]
    assert assign_offsets(buffers) == lower_bound(buffers) == 2048


def slots(*specs: tuple[str, int, int, int]) -> Storage:
    return Storage([Slot(*s) for s in specs])


def test_in_place_only_over_a_dying_input() -> None:
    storage = slots(("a", 64, 0, 1), ("b", 64, 1, 2), ("c", 64, 2, 3), ("d", 64, 3, 3))
    assert storage.in_place("b", "a")  # a is last read by b's node
    assert storage.in_place("d", "c")
    assert storage.root("b") == ("a", 0) and storage.root("d") == ("c", 0)
    late = slots(("a", 64, 0, 5), ("b", 64, 1, 2))
    assert not late.in_place("b", "a")  # a is read again at step 5: b would clobber it
    assert late.root("b") == ("b", 0)


def test_in_place_never_over_the_callers_input() -> None:
    storage = slots(("x", 64, -1, 0), ("y", 64, 0, 1))
    storage.pinned["x"] = "input"
    assert not storage.in_place("y", "x")


def test_concat_slices_and_views() -> None:
    storage = slots(("p", 32, 0, 2), ("q", 48, 1, 2), ("cat", 80, 2, 4), ("flat", 80, 3, 4))
    assert storage.place_slice("p", "cat", 0)
    assert storage.place_slice("q", "cat", 32)
    storage.alias("flat", "cat")
    plan = finish(storage)
    (kind, base), = {plan.where["cat"]}
    assert kind == "arena"
    assert plan.where["p"] == ("arena", base) and plan.where["q"] == ("arena", base + 32)
    assert plan.where["flat"] == plan.where["cat"]
    assert plan.arena_size == 80


def test_concat_slice_refused_when_it_would_overlap_a_live_tensor() -> None:
    # p is written in place over s (64 bytes, read last at step 1); putting p's group at the
    # start of cat puts s under q's slice, and q is written at step 1 while s is still read
    storage = slots(("s", 64, 0, 1), ("p", 32, 1, 2), ("q", 32, 1, 2), ("cat", 64, 2, 3))
    assert storage.in_place("p", "s")
    assert storage.place_slice("p", "cat", 0)
    assert not storage.place_slice("q", "cat", 32)
    plan = finish(storage)
    (_, s_at), (_, q_at) = plan.where["s"], plan.where["q"]
    assert s_at + 64 <= q_at or q_at + 32 <= s_at  # q got its own bytes (and a copy)


def test_scratch_slots_never_take_a_tensor_name(tmp_path) -> None:
    """A tensor may be called `conv/s0` (names are free text) while node `conv` holds its
    im2col scratch: the two get separate slots, and the C still equals the interpreter."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w2")
    # a MaxPool's codes keep the float tensor's name: the conv reads `conv/s0` while its own
    # im2col scratch would be `conv/s0` too
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="first", pads=[1] * 4),
             helper.make_node("MaxPool", ["c1"], ["conv/s0"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["conv/s0", "w2"], ["y"], name="conv", pads=[1] * 4)]
    graph = helper.make_graph(nodes, "scratch", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 6, 6])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "scratch.onnx")
    assert memory_plan.scratch_slot("conv", 0, {"conv/s0"}) == "conv/s0'"
    integer = compile_model(tmp_path / "scratch.onnx", 8, "fixed").integer
    assert "conv/s0" in integer.values
    out = tmp_path / "c"
    out.mkdir()
    emit_library(integer, out, "scratch", measure=False)
    xs = sample_inputs(integer, 20)
    codes, _ = interpreter_outputs(integer, xs)
    got, _ = run_host(build_host(out, "scratch", out / "host"), xs, codes.dtype, codes.shape[1],
                      out)
    np.testing.assert_array_equal(got, codes)
