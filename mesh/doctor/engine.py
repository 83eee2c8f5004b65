"""``mesh doctor`` on the engine: is there a model, which CPU kernels run it, and why not.

Pure rules over ``EngineView`` (this machine's CPU and build, the running peer's engine
state from ``mesh info``). Codes (docs/operations.md):

- ``engine_failed`` (error): the peer runs without a model; the reason and what to do.
- ``engine_restarting`` (warning): its engine died and is coming back.
- ``engine_native_amx`` (warning): the installed build is native (no CPU variants) on a
  CPU with AMX, whose kernels crash on some Intel CPUs.
- ``engine`` (info): the CPU, the variant in use and the threads.
"""

from __future__ import annotations

from mesh.doctor.model import EngineView, Finding, Severity

SUBJECT = "this peer's engine"


def engine_findings(view: EngineView | None) -> list[Finding]:
    if view is None:
        return []
    out: list[Finding] = []
    cpu = view.cpu
    cpu_text = f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}; {' '.join(cpu.get('flags') or []) or 'no extensions'})"
    peer = view.peer or {}
    state = peer.get("state")
    if state == "failed":
        out.append(Finding("engine_failed", Severity.ERROR, SUBJECT, f"no model: {peer.get('reason', '')}",
                           "fix what the reason names, then restart mesh-peer; the peer keeps gossiping and "
                           "routing to others meanwhile"))
    elif state in ("restarting", "starting"):
        out.append(Finding("engine_restarting", Severity.WARNING, SUBJECT,
                           f"{state}: {peer.get('reason', '')} ({peer.get('restarts', 0)} restarts so far)",
                           "wait a few seconds and run `mesh status`; if it keeps restarting, read the peer's log"))
    if not view.variants and cpu.get("amx"):
        out.append(Finding("engine_native_amx", Severity.WARNING, "this machine's llama-cpp-python",
                           f"a native build (no CPU variant libraries) on a CPU with AMX: {cpu_text}",
                           "rerun bin/setup: it builds the portable engine, which skips the AMX kernels that "
                           "crash on some Intel CPUs"))
    build = peer.get("build") or {}
    if build:
        seen = (f"CPU variant {build.get('variant', '?')} ({build.get('reason', '')}), {build.get('threads', '?')} "
                f"threads, on {cpu_text}")
    else:
        seen = f"{len(view.variants)} CPU variants built ({', '.join(view.variants) or 'native build'}); {cpu_text}"
    out.append(Finding("engine", Severity.INFO, SUBJECT if build else "this machine", seen,
                       "MESH_ENGINE_CPU_VARIANT=NAME forces a variant; --threads N sets the threads"))
    return out
