"""Small builders for routing tests (candidates, membership view entries), and checks
that the two agree: a member built here reads back as the candidate built here."""

from __future__ import annotations

from mesh.gossip.view import MemberView
from mesh.routing import Candidate, candidates_from_members


def cand(
    peer: str = "pa",
    *,
    model: str = "m",
    parameters: int = 135_000_000,
    context: int = 8192,
    tps: float = 50.0,
    running: int = 0,
    waiting: int = 0,
    parallel: int = 1,
    queue_limit: int = 64,
    rtt: float | None = 0.001,
    battery: bool = False,
    local: bool = False,
    status: str = "alive",
    tier: int | None = None,
    load_s: float = 0.0,
) -> Candidate:
    return Candidate(
        peer_id=peer, name=f"host-{peer}", model=model, parameters=parameters, context_length=context,
        tokens_per_s=tps, running=running, waiting=waiting, parallel=parallel, queue_limit=queue_limit,
        rtt_s=0.0 if local else rtt, on_battery=battery, is_local=local, status=status, tier=tier, load_s=load_s,
    )


def model_meta(name: str = "m", *, parameters: int = 135_000_000, context: int = 8192, tps: float = 50.0,
               tier: int | None = None) -> dict:
    m = {"name": name, "parameters": parameters, "quantisation": "Q4_1", "context_length": context,
         "tokens_per_s": tps}
    if tier is not None:
        m["tier"] = tier
    return m


def member(
    peer: str = "pa",
    *,
    state: str = "alive",
    models: list | None = None,
    running: int = 0,
    waiting: int = 0,
    parallel: int = 1,
    queue_limit: int = 64,
    battery: bool | None = False,
    is_self: bool = False,
) -> dict:
    """One entry as a peer's ``members`` answer carries it (``MemberView.to_wire``)."""
    return {
        "peer_id": peer, "name": f"host-{peer}", "state": state, "incarnation": 1,
        "addresses": ["tcp://10.0.0.1:7000"], "self": is_self, "last_heard_s": 0.5, "since_s": 10.0,
        "meta": {
            "hw": {"cpu_count": 4, "ram_total_mb": 8000, "ram_available_mb": 4000, "gpu": "", "on_battery": battery},
            "models": models if models is not None else [model_meta()],
            "load": {"running": running, "waiting": waiting, "parallel": parallel, "queue_limit": queue_limit},
        },
    }


def test_a_built_member_reads_back_as_the_built_candidate():
    view = [MemberView.from_wire(member("pa", running=2, battery=True))]
    got = candidates_from_members(view, rtts={"pa": 0.001}, self_id="zz")
    assert got == [cand("pa", running=2, battery=True)]
    assert got.skipped == {} and got.not_live == 0
