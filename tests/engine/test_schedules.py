import math

import pytest

from sslkit.engine.schedules import cosine, warmup_cosine


def test_cosine_hits_start_middle_and_end():
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(150, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_warmup_rises_linearly_from_zero_then_cosine_decays_to_final():
    lr = [warmup_cosine(s, 100, 10, 1.0, 0.1) for s in range(101)]
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert lr[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_no_warmup_starts_at_peak():
    assert warmup_cosine(0, 100, 0, 2.0, 0.0) == 2.0
