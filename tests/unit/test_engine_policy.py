"""The pure parts of the engine: restart policy, CPU variant choice, the engine pipe's frames."""

from __future__ import annotations

import signal

import pytest

from mesh.errors import ModelError
from mesh.inference import engine_wire as wire
from mesh.inference.backend import Capabilities, FinalStats
from mesh.inference.cpu_variant import choose_variant
from mesh.inference.restarts import EngineExit, RestartConfig, after_exit, crash_hint

CFG = RestartConfig(first_delay_s=1.0, max_delay_s=8.0, give_up_after=3, stable_after_s=60.0)
SEGV = -int(signal.SIGSEGV)


def test_a_crash_while_serving_restarts_with_doubling_back_off():
    history = []
    delays = []
    for _ in range(6):
        history.append(EngineExit("ready", -9, ready_for_s=5.0))
        d = after_exit(tuple(history), CFG)
        assert d.restart
        delays.append(d.delay_s)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # capped: never a hot loop
    assert "SIGKILL" in after_exit(tuple(history), CFG).reason


def test_repeated_crashes_at_warm_up_give_up_and_say_why():
    h = (EngineExit("warming", SEGV), EngineExit("warming", SEGV))
    assert after_exit(h, CFG).restart
    d = after_exit(h + (EngineExit("warming", SEGV),), CFG)
    assert not d.restart
    assert d.reason.startswith("the engine crashed 3 times at warm-up: SIGSEGV")


def test_a_crash_after_serving_breaks_the_run_of_early_crashes():
    h = (EngineExit("warming", SEGV), EngineExit("warming", SEGV), EngineExit("ready", SEGV, ready_for_s=3),
         EngineExit("loading", SEGV))
    assert after_exit(h, CFG).restart


def test_a_model_that_cannot_load_is_never_restarted():
    d = after_exit((EngineExit("loading", 3, failed="not a GGUF file"),), CFG)
    assert not d.restart and "cannot load the model: not a GGUF file" in d.reason


def test_exit_descriptions():
    assert EngineExit("ready", SEGV).how == "SIGSEGV"
    assert EngineExit("ready", 1).how == "exit code 1"
    assert EngineExit("ready", None).how == "lost"
    with pytest.raises(ValueError):
        after_exit((), CFG)


def test_crash_hint_names_amx_only_when_it_applies():
    assert "AMX" in crash_hint(variant="sapphirerapids", cpu_amx=True)
    assert "AMX" in crash_hint(variant="built-in", cpu_amx=True)
    assert "AMX" not in crash_hint(variant="haswell", cpu_amx=True)
    assert "AMX" not in crash_hint(variant="built-in", cpu_amx=False)


SCORES = {"x64": 1, "haswell": 50, "icelake": 90, "sapphirerapids": 120, "zen4": 0}


def test_the_amx_variant_is_skipped_for_the_best_safe_one():
    c = choose_variant(SCORES)
    assert c.name == "icelake"
    assert "sapphirerapids" in c.reason and "AMX" in c.reason


def test_variants_this_cpu_cannot_run_are_never_chosen():
    assert choose_variant({"x64": 1, "zen4": 0}).name == "x64"
    assert choose_variant({"zen4": 0}).name is None


def test_ties_break_by_name():
    assert choose_variant({"b": 5, "a": 5}).name == "a"


def test_an_override_must_exist_and_run_here():
    assert choose_variant(SCORES, override="sapphirerapids").name == "sapphirerapids"
    with pytest.raises(ModelError, match="names no CPU variant"):
        choose_variant(SCORES, override="nonesuch")
    with pytest.raises(ModelError, match="lacks instructions"):
        choose_variant(SCORES, override="zen4")


def test_frames_round_trip_and_bounds_are_checked_before_unpacking():
    data = wire.encode({"t": "text", "id": 3, "s": "hé"})
    n = wire.frame_length(data[: wire.LEN_BYTES])
    assert wire.decode(data[wire.LEN_BYTES: wire.LEN_BYTES + n]) == {"t": "text", "id": 3, "s": "hé"}
    with pytest.raises(wire.EngineProtocolError):
        wire.frame_length((wire.MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(wire.EngineProtocolError):
        wire.decode(b"\xc1")
    with pytest.raises(wire.EngineProtocolError):
        wire.decode(b"\x93\x01\x02\x03")  # a list, not a map


def test_stats_and_capabilities_are_validated():
    stats = FinalStats("m", 3, 4, 0.5, 0.1, "stop", 0.01, 0.2, 40.0)
    assert wire.stats_from_wire(wire.stats_to_wire(stats)) == stats
    bad = wire.stats_to_wire(stats) | {"finish_reason": "cancelled"}
    with pytest.raises(wire.EngineProtocolError):
        wire.stats_from_wire(bad)
    with pytest.raises(wire.EngineProtocolError):
        wire.stats_from_wire(wire.stats_to_wire(stats) | {"completion_tokens": "4"})
    caps = Capabilities("m", 1, "Q4", 2048, 10.0, extra={"n_threads": 2})
    assert wire.caps_from_wire(wire.caps_to_wire(caps)) == caps
    with pytest.raises(wire.EngineProtocolError):
        wire.caps_from_wire({"model": 1})


def test_doctor_says_why_a_peer_has_no_model_and_warns_of_native_amx_builds():
    from mesh.doctor.engine import engine_findings
    from mesh.doctor.model import EngineView, Severity

    cpu = {"model": "Xeon", "arch": "x86_64", "flags": ["avx2", "amx_int8"], "amx": True}
    failed = {"state": "failed", "reason": "the engine crashed 3 times at warm-up: SIGSEGV; this CPU has AMX ..."}
    found = {f.code: f for f in engine_findings(EngineView(cpu=cpu, variants=(), peer=failed))}
    assert found["engine_failed"].severity is Severity.ERROR and "SIGSEGV" in found["engine_failed"].seen
    assert found["engine_native_amx"].severity is Severity.WARNING
    ok = {"state": "ready", "build": {"variant": "icelake", "reason": "best of 9 usable", "threads": 2}}
    found = {f.code: f for f in engine_findings(EngineView(cpu=cpu, variants=("haswell", "icelake"), peer=ok))}
    assert set(found) == {"engine"} and "icelake" in found["engine"].seen and "2 threads" in found["engine"].seen
    restarting = {"state": "restarting", "reason": "the engine died while serving (SIGKILL)", "restarts": 1}
    found = {f.code for f in engine_findings(EngineView(cpu=cpu | {"amx": False}, variants=("x64",), peer=restarting))}
    assert found == {"engine_restarting", "engine"}
    assert engine_findings(None) == []


def test_a_peer_without_a_model_offers_none_and_refuses_to_generate():
    import asyncio

    from mesh.errors import GenerationError
    from mesh.inference import capabilities
    from mesh.inference.backend import GenerationRequest
    from mesh.inference.no_model import NoModel

    b = NoModel()
    assert b.status().state == "off" and "--no-model" in b.status().reason
    assert capabilities.models(b) == () and capabilities.snapshot(b).engine.state == "off"

    async def ask():
        async for _ in b.stream(GenerationRequest.from_prompt("hi")):
            pass

    with pytest.raises(GenerationError, match="no model here"):
        asyncio.run(ask())
