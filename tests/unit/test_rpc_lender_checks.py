"""The ggml RPC lender's refusals, before any process starts (mesh.inference.rpc_lender,
mesh.inference.split_load): loopback only, and a clear error without the RPC library."""

import pytest

from mesh.inference import cpu_variant
from mesh.inference.rpc_lender import LenderError, check_endpoint, check_host, rpc_library_path, start_lender


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "localhost", "::1", "127.0.0.2", ""])
def test_only_127_0_0_1_is_accepted_as_a_lender_host(host):
    with pytest.raises(LenderError, match="127.0.0.1 only"):
        check_host(host)
    with pytest.raises(LenderError, match="127.0.0.1 only"):
        start_lender(host=host)
    assert check_host("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("endpoint", ["10.0.0.1:50052", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", "[::1]:50052"])
def test_a_split_load_reaches_lenders_on_loopback_only(endpoint):
    with pytest.raises(LenderError, match="only 127.0.0.1:PORT"):
        check_endpoint(endpoint)
    assert check_endpoint("127.0.0.1:50052") == "127.0.0.1:50052"


def test_a_build_without_the_rpc_library_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_variant, "lib_dir", lambda: tmp_path)
    with pytest.raises(LenderError, match="without -DGGML_RPC=ON"):
        rpc_library_path()
    with pytest.raises(LenderError, match="without -DGGML_RPC=ON"):
        start_lender()
