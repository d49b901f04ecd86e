"""The static arena of an emitted model: which tensors share storage, and where each buffer sits.

Two steps, both on lifetimes [first step, last step] (step i = the i-th node; a tensor lives
from the node that writes it to the last node that reads it, inclusive):

1. `Storage` decides sharing, each decision checked against every other tensor in the group:
   - alias: a view (Reshape, Flatten, ...) is the same bytes as its input, never a copy;
   - in place: an elementwise op may write its output over an input that dies at this node;
   - concat: the inputs of a Concat whose slices are contiguous are written straight into
     their slice of the output, so the Concat itself copies nothing.
   A group of tensors becomes one buffer; the buffer's extent is its members' furthest byte.
2. `assign_offsets` places the buffers in one arena: each at the lowest offset free for its
   whole lifetime (first fit, as the greedy planner of TensorFlow Lite Micro), in several
   orders, keeping the smallest arena.

`lower_bound` is the largest total size of buffers live at one step: no placement of the same
buffers can use less, so arena / lower_bound measures the placement alone.
"""

from __future__ import annotations

import random
from collections.abc import Container
from dataclasses import dataclass, field

ALIGN = 8  # every buffer starts on 8 bytes: int64 scratch and 32-bit words load aligned
RANDOM_ORDERS = 400  # shuffled placement orders tried after the heuristic ones


@dataclass
class Slot:
    """One tensor (or scratch area) to store: its size in bytes and its lifetime."""

    name: str
    size: int
    start: int
    end: int


def scratch_slot(node_name: str, k: int, tensors: Container[str]) -> str:
    """The slot of a node's k-th scratch area: `<node>/s<k>`, primed until no tensor of the
    graph has that name (tensor names are free text, so `X/s0` may be one)."""
    name = f"{node_name}/s{k}"
    while name in tensors:
        name += "'"
    return name


@dataclass
class Buffer:
    """One block of the arena: a group of slots stored together."""

    name: str
    size: int
    start: int
    end: int
    offset: int = -1

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.start <= other.end and other.start <= self.end


class Storage:
    """Union-find of slots with byte offsets: slot -> (parent, offset within the parent)."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = {s.name: s for s in slots}
        self.parent: dict[str, tuple[str, int]] = {}
        self.data: dict[str, str] = {}  # slot -> representative of the same data (aliases)
        self.contains: dict[str, set[str]] = {}  # data rep -> data reps of its slices (concat)
        self.exempt: set[frozenset[str]] = set()  # in-place pairs: writer over a dying input
        self.pinned: dict[str, str] = {}  # root -> "input" (read-only, caller's) or "output"

    # -- queries ---------------------------------------------------------------------------
    def root(self, name: str) -> tuple[str, int]:
        offset = 0
        while name in self.parent:
            name, step = self.parent[name]
            offset += step
        return name, offset

    def members(self, root: str) -> list[tuple[str, int]]:
        found = [(n, self.root(n)) for n in self.slots]
        return [(n, off) for n, (r, off) in found if r == root]

    def extent(self, root: str) -> int:
        return max(off + self.slots[n].size for n, off in self.members(root))

    def data_rep(self, name: str) -> str:
        while self.data.get(name, name) != name:
            name = self.data[name]
        return name

    def same_data(self, a: str, b: str) -> bool:
        ra, rb = self.data_rep(a), self.data_rep(b)
        return ra == rb or self._inside(ra, rb) or self._inside(rb, ra)

    def _inside(self, inner: str, outer: str) -> bool:
        stack = list(self.contains.get(outer, ()))
        while stack:
            rep = self.data_rep(stack.pop())
            if rep == inner:
                return True
            stack.extend(self.contains.get(rep, ()))
        return False

    # -- decisions -------------------------------------------------------------------------
    def alias(self, view: str, base: str) -> None:
        """`view` is the bytes of `base` (no check needed: same data)."""
        root, offset = self.root(base)
        self.parent[view] = (root, offset)
        self.data[view] = self.data_rep(base)

    def in_place(self, out: str, src: str) -> bool:
        """Put `out` over `src` if nothing else in `src`'s group is clobbered while live."""
        if self.root(src)[0] in self.pinned:
            return False
        self.exempt.add(frozenset((out, src)))
        if self._move(out, src, 0):
            return True
        self.exempt.discard(frozenset((out, src)))
        return False

    def place_slice(self, member: str, whole: str, offset: int) -> bool:
        """Put `member` at byte `offset` of `whole` (a Concat input inside its output)."""
        if self.root(member)[0] in self.pinned or self.root(whole)[0] in self.pinned:
            return False
        rep_whole, rep_member = self.data_rep(whole), self.data_rep(member)
        self.contains.setdefault(rep_whole, set()).add(rep_member)
        if self._move(member, whole, offset):
            return True
        self.contains[rep_whole].discard(rep_member)
        return False

    def _move(self, name: str, target: str, offset: int) -> bool:
        """Move `name`'s whole group so that `name` sits at `offset` within `target`."""
        src_root, src_off = self.root(name)
        dst_root, dst_off = self.root(target)
        shift = dst_off + offset - src_off
        if src_root == dst_root or shift < 0:
            return False
        self.parent[src_root] = (dst_root, shift)
        if self._has_conflict(dst_root):
            del self.parent[src_root]
            return False
        return True

    def _has_conflict(self, root: str) -> bool:
        """Two members overlapping in bytes and in lifetime, that are not the same data."""
        members = self.members(root)
        for i, (a, oa) in enumerate(members):
            sa = self.slots[a]
            for b, ob in members[i + 1:]:
                sb = self.slots[b]
                if oa >= ob + sb.size or ob >= oa + sa.size:
                    continue
                if sa.start > sb.end or sb.start > sa.end:
                    continue
                if self.same_data(a, b):
                    continue
                if frozenset((a, b)) in self.exempt and (sa.end == sb.start or
                                                         sb.end == sa.start):
                    continue
                return True
        return False

    # -- result ----------------------------------------------------------------------------
    def buffers(self) -> list[Buffer]:
        """One Buffer per unpinned group, sized to its extent, live over its members' span."""
        roots = sorted({self.root(n)[0] for n in self.slots} - set(self.pinned))
        result = []
        for root in roots:
            members = [self.slots[n] for n, _ in self.members(root)]
            result.append(Buffer(root, _aligned(self.extent(root)),
                                 min(m.start for m in members), max(m.end for m in members)))
        return result


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def lower_bound(buffers: list[Buffer]) -> int:
    """Largest total size of the buffers live at one step."""
    steps = sorted({b.start for b in buffers})
    return max((sum(b.size for b in buffers if b.start <= s <= b.end) for s in steps),
               default=0)


def assign_offsets(buffers: list[Buffer], tries: int = RANDOM_ORDERS) -> int:
    """Set every buffer's offset; returns the arena size.

    First-fit placement in a few heuristic orders (largest first, as TFLM's greedy planner;
    execution order; longest-lived first), then in `tries` shuffled orders from a fixed seed
    (the result is the same on every run), keeping the smallest arena; stops at the bound.
    """
    bound = lower_bound(buffers)
    orders = [sorted(buffers, key=key) for key in (
        lambda b: (-b.size, b.start, b.name),
        lambda b: (b.start, -b.size, b.name),
        lambda b: (-(b.end - b.start), -b.size, b.name))]
    rng = random.Random(0)
    best: tuple[int, dict[str, int]] | None = None
    for i in range(len(orders) + tries):
        if i < len(orders):
            order = orders[i]
        else:
            order = sorted(buffers, key=lambda b: b.name)
            rng.shuffle(order)
        offsets = _greedy(order)
        size = max((offsets[b.name] + b.size for b in buffers), default=0)
        if best is None or size < best[0]:
            best = (size, offsets)
        if best[0] <= bound:
            break
    assert best is not None
    for b in buffers:
        b.offset = best[1][b.name]
    return best[0]


def _greedy(order: list[Buffer]) -> dict[str, int]:
    placed: list[Buffer] = []
    offsets: dict[str, int] = {}
    for buf in order:
        busy = sorted((offsets[p.name], offsets[p.name] + p.size) for p in placed
                      if p.overlaps_in_time(buf))
        offset = 0
        for lo, hi in busy:  # the first gap that holds the buffer
            if offset + buf.size <= lo:
                break
            offset = max(offset, _aligned(hi))
        offsets[buf.name] = offset
        placed.append(buf)
    return offsets


@dataclass
class MemoryPlan:
    """Where every tensor lives: `where[name]` = ("arena" | "input" | "output", byte offset)."""

    where: dict[str, tuple[str, int]] = field(default_factory=dict)
    arena_size: int = 0
    lower_bound: int = 0
    tensor_bound: int = 0  # the same bound without any sharing (every tensor its own buffer)
    buffers: list[Buffer] = field(default_factory=list)


def finish(storage: Storage) -> MemoryPlan:
    """Place the groups of `storage` and resolve every slot to its storage and offset."""
    buffers = storage.buffers()
    arena = assign_offsets(buffers)
    base = {b.name: b.offset for b in buffers}
    plan = MemoryPlan(arena_size=arena, lower_bound=lower_bound(buffers), buffers=buffers)
    for name in storage.slots:
        root, offset = storage.root(name)
        if root in storage.pinned:
            plan.where[name] = (storage.pinned[root], offset)
        else:
            plan.where[name] = ("arena", base[root] + offset)
    singles = [Buffer(s.name, _aligned(s.size), s.start, s.end) for s in storage.slots.values()
               if storage.root(s.name)[0] not in storage.pinned
               and storage.data_rep(s.name) == s.name]  # a view is not a second tensor
    plan.tensor_bound = lower_bound(singles)
    return plan
