import pytest

from mesh.rpc.faults import FaultConfig, FaultInjector


def test_seeded_loss_is_repeatable_and_near_its_rate():
    a = FaultInjector(FaultConfig(loss=0.05, seed=7))
    b = FaultInjector(FaultConfig(loss=0.05, seed=7))
    da = [a.decide() for _ in range(10_000)]
    assert da == [b.decide() for _ in range(10_000)]
    assert 400 < a.dropped < 600 and a.dropped + a.passed == 10_000


def test_delay_and_jitter():
    f = FaultInjector(FaultConfig(delay_s=0.01, jitter_s=0.005, seed=1))
    delays = [f.decide() for _ in range(100)]
    assert all(0.01 <= d <= 0.015 for d in delays) and f.dropped == 0


def test_bad_config():
    with pytest.raises(ValueError):
        FaultConfig(loss=1.0)
    assert not FaultConfig().active and FaultConfig(loss=0.1).active
