"""Run inside a test namespace during a chaos run: keep asking the local peer (each ask
with a deadline) and submitting durable jobs (idempotency keys, retried on failure),
printing one JSON line per outcome, until the duration is over.

    chaos_client.py DATA_DIR DURATION_S JOBS SEED
"""

import asyncio
import json
import sys
import time

from mesh.client import Client
from mesh.errors import DeadlineExceeded, MeshError

data_dir, duration_s, n_jobs, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ASK_DEADLINE_S = 20.0


def out(doc):
    print(json.dumps(doc), flush=True)


async def ask(i: int) -> None:
    client = Client(data_dir, timeout_s=ASK_DEADLINE_S)
    t0 = time.monotonic()
    try:
        answer = await asyncio.wait_for(
            client.aask(f"Name a fruit. ({i})", max_tokens=8, temperature=0, timeout_s=ASK_DEADLINE_S),
            ASK_DEADLINE_S + 10,  # past this the request hung: the peer broke its promise
        )
        out({"ask": "ok", "s": round(time.monotonic() - t0, 2), "deadline_s": ASK_DEADLINE_S, "peer": answer.peer})
    except DeadlineExceeded as e:
        out({"ask": "deadline", "s": round(time.monotonic() - t0, 2), "deadline_s": ASK_DEADLINE_S, "error": str(e)[:200]})
    except MeshError as e:
        out({"ask": "clear_error", "s": round(time.monotonic() - t0, 2), "deadline_s": ASK_DEADLINE_S, "error": f"{type(e).__name__}: {e}"[:200]})
    except TimeoutError:
        out({"ask": "hang", "s": round(time.monotonic() - t0, 2), "deadline_s": ASK_DEADLINE_S})
    except Exception as e:  # noqa: BLE001 - anything else is a defect the test reports
        out({"ask": "unexpected", "s": round(time.monotonic() - t0, 2), "deadline_s": ASK_DEADLINE_S, "error": f"{type(e).__name__}: {e}"[:200]})
    finally:
        await client.aclose()


async def submit(key: str, i: int) -> bool:
    client = Client(data_dir, timeout_s=10)
    try:
        job = await client.asubmit(f"Name a colour. ({i})", key=key, max_tokens=8, temperature=0, timeout_s=5)
        out({"submit": key, "id": job["id"]})
        return True
    except MeshError as e:
        out({"submit_retry": key, "error": str(e)[:200]})
        return False
    finally:
        await client.aclose()


async def main() -> None:
    end = time.monotonic() + duration_s
    pending = [(f"chaos-{seed}-{i}", i) for i in range(n_jobs)]
    i = 0
    while time.monotonic() < end or pending:
        if pending and (i % 2 == 0 or time.monotonic() >= end):
            key, n = pending[0]
            if await submit(key, n):
                pending.pop(0)
            else:
                await asyncio.sleep(0.5)
        elif time.monotonic() < end:
            await ask(i)
        i += 1
    out({"done": True})


asyncio.run(main())
