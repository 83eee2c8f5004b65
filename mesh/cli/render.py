"""Human-readable output for the CLI: an answer's footer and aligned tables."""

from __future__ import annotations

import time

from mesh.api import Answer


def short_id(peer_id: str) -> str:
    return peer_id[:12]


def step_line(step: dict) -> str:
    """One line for a routing step while an answer streams (to stderr)."""
    if step.get("no_route"):
        return f"-- step {step.get('n', 0) + 1}: {step.get('reason')}: no route ({step['no_route']})"
    if step.get("kind") == "cloud":
        return f"-- step {step.get('n', 0) + 1}: {step.get('reason')} -> cloud model {step.get('model')}"
    if step.get("n", 0) == 0 and step.get("attempt", 0) == 0:
        return ""  # the first choice is told in the footer
    what = "retrying on" if step.get("attempt") else f"step {step.get('n', 0) + 1}: {step.get('reason')} ->"
    return f"-- {what} {step.get('name') or short_id(str(step.get('peer')))} ({step.get('model')})"


def _why(a: Answer) -> str:
    r = a.route or {}
    if not r:
        return ""
    why = f" · chosen: {r.get('choice')}"
    if r.get("score_s") is not None:
        why += f", expected {r['score_s']:.2f} s"
    ru = r.get("runner_up")
    if isinstance(ru, dict):
        score = f" {ru['score_s']:.2f} s" if ru.get("score_s") is not None else ""
        why += f"; runner-up {ru.get('name') or short_id(str(ru.get('peer')))}{score}"
    return why


def _path(a: Answer) -> str:
    if not a.path or len(a.path) < 2:
        return ""
    steps = []
    for p in a.path:
        who = p.get("model") or "no route"
        conf = f" {p['confidence']:.2f}" if isinstance(p.get("confidence"), (int, float)) else ""
        steps.append(f"{who}{conf}")
    return "\n-- escalated: " + " -> ".join(steps)


def answer_footer(a: Answer) -> str:
    name = (a.route or {}).get("name")
    who = f"{name} ({short_id(a.peer)})" if name else ("the cloud" if a.peer == "cloud" else f"peer {short_id(a.peer)}")
    return (
        f"-- answered by {who} with {a.model} · confidence {a.confidence:.2f}"
        f" (least likely token {a.min_token_prob:.2f}) · {a.prompt_tokens} prompt + {a.completion_tokens}"
        f" completion tokens · {a.tokens_per_s:.1f} tok/s · first token {a.time_to_first_token_s * 1000:.0f} ms"
        f" · {a.finish_reason}{_why(a)}"
    ) + _path(a)


def table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def info_table(doc: dict, *, endpoint: str) -> str:
    model = doc.get("model", {})
    rpc = doc.get("rpc", {})
    rows = [
        ("peer", str(doc.get("peer"))),
        ("address", endpoint),
        ("version", f"{doc.get('version')} (protocol {doc.get('protocol')})"),
        ("uptime", f"{doc.get('uptime_s', 0):.0f} s"),
        ("model", f"{model.get('name')} ({model.get('quantisation') or '?'}, {model.get('parameters', 0) / 1e6:.0f}M params)"
                  if model.get("name") else "none"),
        ("context", f"{model.get('context_length')} tokens"),
        ("speed", f"{model.get('tokens_per_s', 0):.1f} tok/s"),
        ("capacity", f"{model.get('parallel')} at once, {model.get('queue_limit')} queued before busy"),
        *engine_rows(doc.get("engine")),
        ("answers", str(doc.get("answers"))),
        ("calls", f"{rpc.get('calls_ok', 0)} ok, {rpc.get('calls_failed', 0)} failed, "
                  f"{rpc.get('calls_cancelled', 0)} cancelled, {rpc.get('in_flight', 0)} in flight"),
    ]
    refused = {k: v for k, v in rpc.get("rejections", {}).items() if v}
    rows.append(("refused frames", ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"))
    return table(rows)


def engine_rows(engine: dict | None) -> list[tuple[str, str]]:
    """The engine's state (and why, when it is not ready), its CPU kernels and threads, the CPU."""
    if not isinstance(engine, dict):
        return []
    state = str(engine.get("state", "?"))
    if state != "ready" and engine.get("reason"):
        state += f": {engine.get('reason')}"
    if engine.get("restarts"):
        state += f" ({engine.get('restarts')} restarts)"
    rows = [("engine", state)]
    build = engine.get("build") or {}
    if build:
        rows.append(("engine build", f"llama-cpp-python {build.get('llama_cpp_python', '?')}, CPU variant "
                                     f"{build.get('variant', '?')} ({build.get('reason', '')}), "
                                     f"{build.get('threads', '?')} threads, pid {engine.get('pid')}"))
    cpu = engine.get("cpu") or {}
    if cpu:
        rows.append(("cpu", f"{cpu.get('model', '?')} [{cpu.get('arch', '?')}: {' '.join(cpu.get('flags') or [])}]"))
    return rows


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _hardware(hw: dict) -> str:
    parts = [f"{hw.get('cpu_count', '?')} cpu", f"{hw.get('ram_total_mb', 0) / 1024:.0f}G ram"]
    if hw.get("gpu"):
        parts.append(str(hw["gpu"]))
    if hw.get("on_battery"):
        parts.append("battery")
    return ", ".join(parts)


def _models(models: list) -> str:
    return ", ".join(f"{m.get('name')}" for m in models if isinstance(m, dict)) or "-"


def _load(load: dict, models: list) -> str:
    tps = max((m.get("tokens_per_s", 0) for m in models if isinstance(m, dict)), default=0)
    return f"{load.get('running', 0)} active, {load.get('waiting', 0)} queued, {tps:.0f} tok/s"


def grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def peers_table(members: list[dict]) -> str:
    order = {"alive": 0, "suspect": 1, "left": 2, "dead": 3}
    rows = []
    for m in sorted(members, key=lambda m: (order.get(m.get("state"), 9), m.get("name", ""), m.get("peer_id", ""))):
        meta = m.get("meta") or {}
        addrs = m.get("addresses") or []
        rows.append([
            str(m.get("name") or "-") + (" (this peer)" if m.get("self") else ""),
            short_id(str(m.get("peer_id", ""))),
            addrs[0].removeprefix("tcp://") if addrs else "-",
            _state(m),
            _models(meta.get("models") or []),
            _hardware(meta.get("hw") or {}),
            _load(meta.get("load") or {}, meta.get("models") or []),
            _ago(m.get("last_heard_s")),
        ])
    return grid(["NAME", "PEER", "ADDRESS", "STATE", "MODELS", "HARDWARE", "LOAD", "LAST HEARD"], rows)


def _state(m: dict) -> str:
    if m.get("replaced_by"):
        return f"rotated -> {short_id(str(m['replaced_by']))}"
    if m.get("revoked"):
        return "revoked"
    engine = (m.get("meta") or {}).get("engine") if isinstance(m.get("meta"), dict) else None
    state = str(m.get("state", "?"))
    if isinstance(engine, dict) and engine.get("state") not in (None, "ready") and state == "alive":
        state += f", engine {engine.get('state')}"
    return state


def status_screen(info: dict, members: dict, *, endpoint: str) -> str:
    views = members.get("members", [])
    me = next((m for m in views if m.get("self")), {})
    counts: dict[str, int] = {}
    for m in views:
        counts[m.get("state", "?")] = counts.get(m.get("state", "?"), 0) + 1
    stats = members.get("stats", {})
    head = info_table(info, endpoint=endpoint)
    rows = [
        ("name", str(info.get("name") or me.get("name") or "-")),
        ("mesh", str(info.get("mesh") or "-")),
        ("join here with", _join_line(me.get("addresses") or [], info.get("transport_key"))),
        ("certificate", _certificate(info.get("certificate"))),
        ("incarnation", str(me.get("incarnation", "-"))),
        ("members", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "just this peer"),
        ("jobs", ", ".join(f"{n} {s}" for s, n in sorted((info.get("jobs") or {}).items()) if n) or "none"),
        ("waiting to sync", _sync(info.get("sync"))),
        ("gossip", f"{sum((stats.get('received') or {}).values())} messages in, "
                   f"{sum((stats.get('sent') or {}).values())} out, {members.get('rejected_records', 0)} records refused"),
    ]
    return head + "\n" + table(rows) + "\n\n" + peers_table(views)


def _join_line(addresses: list, transport_key: str | None) -> str:
    """What another member of this mesh passes to reach this peer: --join HOST:PORT@KEY."""
    if not addresses or not transport_key:
        return "-"
    return f"--join {str(addresses[0]).removeprefix('tcp://')}@{transport_key}"


def _certificate(cert: dict | None) -> str:
    """Validity, renewal and (after mesh rotate) the peer id this one succeeded."""
    if not cert:
        return "-"
    day = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
    text = f"valid until {day(cert['expires_at'])}, renews from {day(cert['renews_at'])}"
    if cert.get("predecessor"):
        text += f"; rotated from {short_id(cert['predecessor'])}"
    return text


def _sync(sync: dict | None) -> str:
    if not sync:
        return "-"
    held, handed = sync.get("outcomes_held", 0), sync.get("handed_over", 0)
    if not held and not handed:
        return "nothing"
    return (f"{held} result(s) held for peers that are offline or not yet reached, "
            f"{handed} job(s) of this peer running elsewhere")


def jobs_table(jobs: list[dict], counts: dict) -> str:
    import time

    now = time.time()
    rows = []
    for j in jobs:
        stats = j.get("stats") or {}
        rows.append([
            str(j.get("id")), str(j.get("state")), short_id(str(j.get("ran_on") or stats.get("peer") or "-")),
            str(j.get("attempts")), _ago(now - float(j.get("created_at") or now)),
            (j.get("prompt") or "").replace("\n", " ")[:40],
        ])
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n) or "no jobs"
    return grid(["JOB", "STATE", "RAN ON", "ATTEMPTS", "AGE", "PROMPT"], rows) + f"\n{summary}"
