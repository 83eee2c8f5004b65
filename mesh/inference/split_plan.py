"""Which layers of a model go to which lender: a pure plan (groundwork for issue 16).

llama.cpp decides placement from two numbers, and this plan is written in them:

- ``n_gpu_layers`` = k: the *last* k repeating layers (``blk.{n-k}`` .. ``blk.{n-1}``)
  go to the devices in ``llama_model_params.devices``; the others stay on the CPU of the
  process that loads the model. The token embeddings always stay local, and the output
  head (the logits) stays local as long as k <= n_layers (llama.cpp counts it as layer
  n_layers). So the plan never asks for more than ``n_layers``: the logits are computed
  where the answer is sampled. (llama.cpp offers no "first k layers remote" without
  per-tensor buffer overrides; which repeating layers are remote does not change the
  answer, only what crosses the link: one hidden state per token each way.)
- ``tensor_split``: how those k layers are shared among the devices, in order; llama.cpp
  normalises it to cumulative fractions and gives layer j of the block (0-based) to the
  first device whose cumulative share exceeds j/k. Giving it integer layer counts makes
  that exactly those counts.

``plan_layers`` shares the remote layers among lenders in proportion to the memory each
offers (largest remainders), never more than fit in a lender's offer at ``layer_bytes``
each (what is left over goes to those with room).
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
    """Placement of a model's repeating layers: ``owners[i]`` is the endpoint holding
    layer i, or ``None`` for this process."""

    n_layers: int
    endpoints: tuple[str, ...]  # lenders that get at least one layer, in devices order
    counts: tuple[int, ...]  # layers per endpoint, same order
    owners: tuple[str | None, ...]

    @property
    def remote_layers(self) -> int:
        """llama.cpp's ``n_gpu_layers``."""
        return sum(self.counts)

    @property
    def local_layers(self) -> int:
        return self.n_layers - self.remote_layers

    def tensor_split(self) -> tuple[float, ...]:
        """llama.cpp's ``tensor_split`` for ``endpoints`` (integer counts as floats)."""
        return tuple(float(c) for c in self.counts)


def plan_layers(
    n_layers: int, layer_bytes: int, offers: Sequence[Offer], *, max_remote: int | None = None
) -> LayerPlan:
    """Put up to ``max_remote`` (default: all) of ``n_layers`` layers on the lenders of
    ``offers``, in proportion to their offered bytes, at most ``offer // layer_bytes``
    layers each; the output head always stays local (see the module docstring)."""
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
    caps = [o.bytes // layer_bytes for o in offers]
    want = n_layers if max_remote is None else min(max_remote, n_layers)
    total = min(want, sum(caps))
    counts = _share(total, [o.bytes for o in offers], caps)
    used = [(o.endpoint, c) for o, c in zip(offers, counts, strict=True) if c > 0]
    owners: list[str | None] = [None] * (n_layers - total)
    for endpoint, c in used:
        owners += [endpoint] * c
    return LayerPlan(
        n_layers=n_layers,
        endpoints=tuple(e for e, _ in used),
        counts=tuple(c for _, c in used),
        owners=tuple(owners),
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
