"""The HTTP API with clients other than the raw SDK, and escalation seen over HTTP:

- LangChain's OpenAI chat model (langchain-openai), unchanged, against a real peer;
- a streamed answer that escalates after its text began: the chunks say so
  (``mesh.restart``) and the last chunk carries the kept text and the path;
  non-streaming callers get the escalated answer and its path in the ``mesh`` field.
"""

from __future__ import annotations

import json

import httpx
import pytest

from mesh.identity.joining import make_invite
from mesh.paths import DataDir
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support.loopmesh import config, run, wait_for


@pytest.mark.subprocess
@pytest.mark.model
def test_langchain_chat_openai_works_unchanged(tmp_path):
    from langchain_openai import ChatOpenAI

    from support.peerproc import PeerProcess

    p = PeerProcess(tmp_path / "a", "--threads", "1")
    try:
        url = p.wait_ready()["http"]
        llm = ChatOpenAI(base_url=url + "/v1", api_key="not-needed-on-loopback", model="mesh", max_tokens=8,
                         temperature=0)
        reply = llm.invoke("Say hello.")
        assert reply.content.strip()
        assert reply.response_metadata.get("model_name")
        pieces = [c.content for c in llm.stream("Name a fruit.")]
        assert "".join(pieces).strip()
    finally:
        p.stop()


async def _two_tier_mesh(tmp_path):
    small = ScriptedBackend(["meh", " answer"], model="small", parameters=135, confidence=0.3, delay_s=0.01)
    big = ScriptedBackend(["better", " answer"], model="big", parameters=1000, confidence=0.9)
    first = Peer(config(tmp_path, "p0", http_port=0), backend=small)
    await first.start()
    token = make_invite(DataDir(tmp_path / "p0"), first.identity.public_raw, [first.endpoint], ttl_s=600,
                        now=__import__("time").time(), inviter_curve=first.transport.public).to_text()
    second = Peer(config(tmp_path, "p1", join_token=token, seeds=(first.endpoint,)), backend=big)
    await second.start()
    await wait_for(lambda: any("big" in [x.name for x in m.models]
                               for m in first.membership_service.view() if not m.is_self))
    return first, second


def test_escalation_is_visible_over_http_streaming_and_not(tmp_path):
    async def main():
        first, second = await _two_tier_mesh(tmp_path)
        try:
            body = {"model": "small", "messages": [{"role": "user", "content": "hard"}], "max_tokens": 8}
            async with httpx.AsyncClient(base_url=first.http_url, timeout=30) as http:
                r = await http.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                doc = r.json()
                assert doc["choices"][0]["message"]["content"] == "better answer"
                assert doc["mesh"]["escalated"] is True
                assert [step["model"] for step in doc["mesh"]["path"]] == ["small", "big"]
                assert r.headers["X-Mesh-Model"] == "big"
                chunks = []
                async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                    assert s.status_code == 200
                    async for line in s.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunks.append(json.loads(line[len("data: "):]))
                assert any((c.get("mesh") or {}).get("restart") for c in chunks)  # told mid-stream
                last = [c for c in chunks if c.get("mesh")][-1]["mesh"]
                assert last["restarted"] is True and last["model"] == "big"
        finally:
            await second.stop(grace_s=0)
            await first.stop(grace_s=0)

    run(main())
