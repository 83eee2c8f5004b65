"""One model over ggml RPC servers on loopback (issue 16 groundwork): real lender
processes (mesh.inference.rpc_lender) and a real split load (mesh.inference.split_load).

The answer at temperature 0 with every layer, or half of them, on lenders is the whole
model's answer; each lender is shown to have done the work (its process CPU time grows
with the layers it holds, and stays flat when it holds none); a lender killed -9 while
the model generates makes the generation fail with a clear error, quickly.

One thread per process: the machine has 2 cores, and OpenMP thread teams spinning on
shared cores slow each other down a hundredfold.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from mesh.errors import GenerationError
from mesh.inference.models import default_model_path
from mesh.inference.rpc_lender import start_lender
from mesh.inference.split_load import generate_in_child
from mesh.inference.split_plan import Offer, plan_layers

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

PROMPT = "The three primary colors are"
TOKENS = 24
N_LAYERS = 30  # SmolLM2-135M; llama.cpp's n_gpu_layers counts one more slot, the output head
ALL = N_LAYERS + 1
LAYER_MIB = 2.11  # one repeating layer's weights (llama.cpp's load log: 31 slots 89.99 MiB, 15 slots 58.28)
# CPU seconds a lender spends on 24 tokens of SmolLM2-135M: ~0.6 s with all 31 slots,
# ~0.3 s with 15, 0.01-0.06 s with none (connected, buffers reserved; measured). The bars:
WORK_CPU_S = 0.25  # all slots: well above "none"
IDLE_CPU_S = 0.12  # no slots: well below half


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.fixture(scope="module")
def whole():
    """The answer of the model loaded whole, in one process."""
    r = generate_in_child(default_model_path(), (), prompt=PROMPT, max_tokens=TOKENS, n_threads=1, timeout=120)
    assert r.remote_layers == 0 and len(r.tokens) == TOKENS and r.text.strip()
    return r


@pytest.fixture
def lender(tmp_path):
    with start_lender(cache_dir=tmp_path / "cache", threads=1) as one:
        yield one


def test_every_layer_on_a_lender_answers_as_the_whole_model(whole, lender):
    before = cpu_seconds(lender.pid)
    r = generate_in_child(
        default_model_path(), [lender.endpoint], remote_layers=ALL,
        prompt=PROMPT, max_tokens=TOKENS, n_threads=1, timeout=120,
    )
    assert (r.n_layers, r.remote_layers) == (N_LAYERS, ALL)
    assert r.tokens == whole.tokens and r.text == whole.text
    # llama.cpp's load log: every layer's weights and the output head are on the lender
    assert r.buffer_mib(lender.endpoint) > N_LAYERS * LAYER_MIB, r.buffers
    assert cpu_seconds(lender.pid) - before > WORK_CPU_S, "the lender did no work: the layers were not remote"


def test_half_the_layers_on_a_lender_answer_as_the_whole_model(whole, lender):
    before = cpu_seconds(lender.pid)
    r = generate_in_child(
        default_model_path(), [lender.endpoint], remote_layers=N_LAYERS // 2,
        prompt=PROMPT, max_tokens=TOKENS, n_threads=1, timeout=120,
    )
    assert r.remote_layers == N_LAYERS // 2
    assert r.tokens == whole.tokens
    # 14 layers and the output head: about 58 MiB, against 90 for all of them
    assert 12 * LAYER_MIB < r.buffer_mib(lender.endpoint) - 26 < 17 * LAYER_MIB, r.buffers
    assert cpu_seconds(lender.pid) - before > IDLE_CPU_S


def test_no_remote_layers_leave_the_lender_idle(lender):
    """The control for the CPU-time proof above: connected, but holding nothing."""
    before = cpu_seconds(lender.pid)
    r = generate_in_child(
        default_model_path(), [lender.endpoint], remote_layers=0,
        prompt=PROMPT, max_tokens=TOKENS, n_threads=1, timeout=120,
    )
    assert r.remote_layers == 0
    assert cpu_seconds(lender.pid) - before < IDLE_CPU_S


def test_two_lenders_share_the_layers_as_planned(whole, tmp_path):
    with start_lender(threads=1) as a, start_lender(threads=1) as b:
        plan = plan_layers(N_LAYERS, 10 << 20, [Offer(a.endpoint, 100 << 20), Offer(b.endpoint, 200 << 20)])
        assert plan.endpoints == (a.endpoint, b.endpoint) and plan.counts == (10, 20)  # b: 19 and the head
        before = {lend.pid: cpu_seconds(lend.pid) for lend in (a, b)}
        r = generate_in_child(
            default_model_path(), plan.endpoints, remote_layers=plan.remote_layers,
            tensor_split=plan.tensor_split(), prompt=PROMPT, max_tokens=TOKENS, n_threads=1, timeout=120,
        )
        assert r.tokens == whole.tokens
        used = {lend.pid: cpu_seconds(lend.pid) - before[lend.pid] for lend in (a, b)}
        assert used[a.pid] > IDLE_CPU_S / 2 and used[b.pid] > IDLE_CPU_S
        # llama.cpp's load log: 10 layers on a, as planned (its default would share by free memory)
        on_a, on_b = r.buffer_mib(a.endpoint), r.buffer_mib(b.endpoint)
        assert 9 * LAYER_MIB < on_a < 11 * LAYER_MIB and on_b > 20 * LAYER_MIB, r.buffers


def test_a_lender_killed_mid_generation_fails_the_generation_clearly_and_quickly(lender):
    outcome: dict = {}

    def generate() -> None:
        try:
            outcome["result"] = generate_in_child(
                default_model_path(), [lender.endpoint], remote_layers=ALL,
                prompt=PROMPT, max_tokens=400, n_threads=1, timeout=60,
            )
        except GenerationError as e:
            outcome["error"] = e

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    # past the load (0.06 s with no slots, ~0.3 s for 24 tokens with every slot): generating
    while cpu_seconds(lender.pid) < 0.8:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.02)
    os.kill(lender.pid, signal.SIGKILL)
    killed = time.monotonic()
    worker.join(20)
    assert not worker.is_alive(), "the generation hung after its lender died"
    assert time.monotonic() - killed < 10
    assert "result" not in outcome, "400 tokens were generated although the lender holding every layer died"
    msg = str(outcome["error"])
    assert "died" in msg and "lender" in msg and lender.endpoint in msg
    assert any(why in msg for why in ("Remote RPC server crashed", "recv failed", "Failed to connect")), msg


def test_a_lender_refuses_any_host_but_loopback():
    from mesh.inference.rpc_lender import LenderError

    for host in ("0.0.0.0", "192.168.1.2", "localhost", "::1"):
        with pytest.raises(LenderError, match="127.0.0.1 only"):
            start_lender(host=host)
    with pytest.raises(LenderError, match="only 127.0.0.1:PORT"):
        generate_in_child(default_model_path(), ["10.0.0.1:50052"], remote_layers=1)


def test_a_lender_that_never_answers_fails_the_generation_at_the_deadline_not_a_hang():
    """A port that accepts connections and never answers (a stalled lender): ggml's client
    would wait forever; generate_in_child kills its process at the deadline."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(GenerationError, match="did not finish within 8 s"):
            generate_in_child(default_model_path(), [endpoint], remote_layers=ALL, max_tokens=4, timeout=8)
        assert time.monotonic() - started < 15


def test_the_whole_model_baseline_is_llama_cpp_pythons_own_greedy_answer(whole):
    """The baseline above is split_load's own loop with nothing remote; llama-cpp-python's
    ``Llama`` at temperature 0, in another process, gives the same text."""
    import subprocess
    import sys

    code = (
        "import sys; from mesh.inference.cpu_variant import ensure_cpu_variant; ensure_cpu_variant()\n"
        "from llama_cpp import Llama\n"
        "llm = Llama(sys.argv[1], n_ctx=512, n_threads=1, verbose=False)\n"
        "out = llm.create_completion(sys.argv[2], max_tokens=int(sys.argv[3]), temperature=0.0)\n"
        "sys.stdout.write(out['choices'][0]['text'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(default_model_path()), PROMPT, str(TOKENS)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == whole.text
