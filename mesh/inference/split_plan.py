"""Which layers of a model go to which lender: a pure plan (groundwork for issue 16).

llama.cpp decides placement from two numbers, and this plan is written in them:

- ``n_gpu_layers`` = k counts n_layers + 1 slots: the repeating layers ``blk.0`` ..
  ``blk.{n-1}`` and then the output head (the final norm and the logits matrix, slot
  n). The *last* k slots go to the devices in ``llama_model_params.devices``
  (llama.cpp: ``i_gpu_start = n_layer + 1 - n_gpu_layers``); the token embeddings
  always stay local. So any k >= 1 puts the output head remote (k = 1: the output head
  only; k = n + 1: everything but the embeddings), and the logits come back over the
  link, one row per token (the RPC client fetches them; about 200 KB per token for a
  49k vocabulary in f32).
  Keeping the output head local while the first layers go remote needs per-tensor
  buffer overrides (``tensor_buft_overrides``, ``n_gpu_layers`` 0). Tried on this build
  (1 thread each, loopback): the same greedy answer, but 31-33 tokens/s with 15 layers
  remote and 22-23 with 30, against 50 local, because the KV cache and attention stay
  local and each remote layer's activations cross the link both ways. Not used.
- ``tensor_split``: how those k slots are shared among the devices, in order; llama.cpp
  normalises it to cumulative fractions and gives slot j of the block (0-based) to the
  first device whose cumulative share exceeds j/k. Giving it integer slot counts makes
  that exactly those counts; the output head goes to the last device.

``plan_layers`` puts the output head on the lender with the most memory (its offer must
hold ``output_bytes`` besides its layers; that lender is placed last), then shares the
remote repeating layers among lenders in proportion to the memory each offers (largest
remainders), never more than fit in a lender's offer at ``layer_bytes`` each (what is
left over goes to those with room).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Offer:
    """A lender: its endpoint and the bytes of memory it offers."""

    endpoint: str
    bytes: int


@dataclass(frozen=True)
class LayerPlan:
    """Placement: ``owners[i]`` is the endpoint holding repeating layer i, or ``None``
    for this process; ``output_owner`` the one holding the output head."""

    n_layers: int
    endpoints: tuple[str, ...]  # lenders that get at least one slot, in devices order
    counts: tuple[int, ...]  # slots per endpoint, same order (the last one's includes the output head)
    owners: tuple[str | None, ...]
    output_owner: str | None

    @property
    def remote_layers(self) -> int:
        """llama.cpp's ``n_gpu_layers`` (the output head counted as a slot)."""
        return sum(self.counts)

    @property
    def local_layers(self) -> int:
        """Repeating layers left in this process."""
        return sum(1 for o in self.owners if o is None)

    def tensor_split(self) -> tuple[float, ...]:
        """llama.cpp's ``tensor_split`` for ``endpoints`` (integer counts as floats)."""
        return tuple(float(c) for c in self.counts)


def plan_layers(
    n_layers: int,
    layer_bytes: int,
    offers: Sequence[Offer],
    *,
    output_bytes: int | None = None,
    max_remote: int | None = None,
) -> LayerPlan:
    """Put up to ``max_remote`` slots (default: all n_layers + 1) on the lenders of
    ``offers``: the output head (``output_bytes``, default ``layer_bytes``) on the
    lender offering most, the repeating layers in proportion to the offered bytes, at
    most what fits in each offer (see the module docstring)."""
    if n_layers < 0 or layer_bytes <= 0:
        raise ValueError("n_layers must be >= 0 and layer_bytes > 0")
    if max_remote is not None and max_remote < 0:
        raise ValueError("max_remote must be >= 0")
    seen: set[str] = set()
    for o in offers:
        if o.bytes < 0:
            raise ValueError(f"offer of {o.endpoint} is negative")
        if o.endpoint in seen:
            raise ValueError(f"endpoint {o.endpoint} offered twice")
        seen.add(o.endpoint)
    out_bytes = layer_bytes if output_bytes is None else output_bytes
    want = n_layers + 1 if max_remote is None else min(max_remote, n_layers + 1)
    tail = max(range(len(offers)), key=lambda i: (offers[i].bytes, -i), default=None)
    if want == 0 or tail is None or offers[tail].bytes < out_bytes:
        return LayerPlan(n_layers, (), (), (None,) * n_layers, None)  # any remote slot takes the output head
    order = [i for i in range(len(offers)) if i != tail] + [tail]
    caps = [offers[i].bytes // layer_bytes for i in order]
    caps[-1] = (offers[tail].bytes - out_bytes) // layer_bytes
    layers = min(want - 1, sum(caps))
    counts = _share(layers, [offers[i].bytes for i in order], caps)
    counts[-1] += 1  # the output head
    used = [(offers[i].endpoint, c) for i, c in zip(order, counts, strict=True) if c > 0]
    owners: list[str | None] = [None] * (n_layers - layers)
    for endpoint, c in used:
        owners += [endpoint] * c
    return LayerPlan(
        n_layers=n_layers,
        endpoints=tuple(e for e, _ in used),
        counts=tuple(c for _, c in used),
        owners=tuple(owners[:n_layers]),
        output_owner=used[-1][0],
    )


def _share(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """``total`` units in proportion to ``weights`` (largest remainders, ties to the
    earlier), none above its cap; what a capped one cannot take is shared again among
    the others. Requires ``total <= sum(caps)``."""
    counts = [0] * len(weights)
    left = total
    open_ = [i for i in range(len(weights)) if caps[i] > 0 and weights[i] > 0]
    while left > 0 and open_:
        w = sum(weights[i] for i in open_)
        exact = {i: left * weights[i] / w for i in open_}
        give = {i: int(exact[i]) for i in open_}
        rest = left - sum(give.values())
        for i in sorted(open_, key=lambda i: (-(exact[i] - give[i]), i))[:rest]:
            give[i] += 1
        for i in open_:
            room = caps[i] - counts[i]
            take = min(give[i], room)
            counts[i] += take
            left -= take
        open_ = [i for i in open_ if counts[i] < caps[i]]
    return counts


# --- across peers (issue 16): how many slots must leave, and to whom --------------------


@dataclass(frozen=True)
class LenderCandidate:
    """A member that lends memory, as gossip shows it."""

    peer_id: str
    name: str
    address: str  # its RPC address, tcp://HOST:PORT (the tunnel is on the same host)
    transport: str  # its certified CurveZMQ key (text)
    free_bytes: int
    busy: int = 0  # requests running and waiting there
    rtt_s: float | None = None  # the link's round trip, from gossip probes (None: not measured yet)


def slot_bytes(file_bytes: int, n_layers: int) -> int:
    """Memory of one slot (a repeating layer, or the output head), estimated from the
    file: its n layers, the output head and the token embeddings share it evenly."""
    if n_layers < 1 or file_bytes < 1:
        raise ValueError("a model has at least one layer and one byte")
    return max(file_bytes // (n_layers + 2), 1)


def remote_slots(file_bytes: int, n_layers: int, budget_bytes: int) -> int:
    """How many slots must leave this peer so that what stays (the token embeddings and
    the first layers) fits ``budget_bytes``: 0 when the whole model fits."""
    if file_bytes <= budget_bytes:
        return 0
    slot = slot_bytes(file_bytes, n_layers)
    local = max(budget_bytes // slot - 1, 0)  # the embeddings always stay
    return max(n_layers + 1 - local, 0)


UNKNOWN_RTT_S = 0.05  # a link not probed yet counts as a slow LAN


def choose_lenders(candidates: Sequence[LenderCandidate], need_bytes: int) -> list[LenderCandidate]:
    """The lenders to hold ``need_bytes``. Every generated token crosses each chosen
    link (a round trip per lender), so: one lender if any can hold it all, the one with
    the shortest round trip, then the least busy; otherwise the fewest, most free memory
    first (ties: shorter round trip, less busy, peer id). Empty when even all of them
    together cannot."""
    def rtt(c: LenderCandidate) -> float:
        return UNKNOWN_RTT_S if c.rtt_s is None else c.rtt_s

    usable = [c for c in candidates if c.free_bytes > 0]
    alone = [c for c in usable if c.free_bytes >= need_bytes]
    if alone:
        return [min(alone, key=lambda c: (rtt(c), c.busy, -c.free_bytes, c.peer_id))]
    order = sorted(usable, key=lambda c: (-c.free_bytes, rtt(c), c.busy, c.peer_id))
    chosen, total = [], 0
    for c in order:
        if total >= need_bytes:
            break
        chosen.append(c)
        total += c.free_bytes
    return chosen if total >= need_bytes else []


def spread(n_layers: int, need: int, local_bytes: int, offers: Sequence[int]) -> int:
    """How many slots go remote: in proportion to memory (this peer's budget against
    what the lenders offer), never fewer than ``need`` nor more than fit the offers."""
    total = local_bytes + sum(offers)
    if total <= 0:
        return need
    proportional = round((n_layers + 1) * sum(offers) / total)
    return max(need, min(proportional, n_layers + 1))
