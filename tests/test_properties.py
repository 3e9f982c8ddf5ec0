"""Property-based tests (hypothesis): what must hold for every input, not only for the hand-picked ones."""

import math

import torch
from hypothesis import given, settings, strategies as st

from sslkit.engine.schedules import cosine, warmup_cosine
from sslkit.evaluate.knn import knn_classify
from sslkit.methods.dino import teacher_temperature
from sslkit.methods.mae import random_masking

values = st.floats(min_value=-10, max_value=10, allow_nan=False)
totals = st.integers(min_value=1, max_value=100_000)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@given(start=values, end=values, total=totals, data=st.data())
def test_cosine_stays_between_its_ends_moves_one_way_and_holds_after_the_end(start, end, total, data):
    steps = sorted(data.draw(st.lists(st.integers(0, 2 * total), min_size=2, max_size=20)))
    schedule = [cosine(step, total, start, end) for step in steps]
    low, high = min(start, end), max(start, end)
    assert all(low - 1e-12 <= v <= high + 1e-12 for v in schedule)
    pairs = list(zip(schedule, schedule[1:]))
    assert all(b <= a + 1e-12 for a, b in pairs) if start >= end else all(b >= a - 1e-12 for a, b in pairs)
    assert close(cosine(0, total, start, end), start) and close(cosine(total, total, start, end), end)
    assert close(cosine(2 * total, total, start, end), end)


@given(peak=st.floats(1e-6, 10), final_share=st.floats(0, 1), total=st.integers(10, 100_000),
       warmup_share=st.floats(0.01, 0.9),
       data=st.data())
def test_warmup_cosine_rises_to_its_peak_then_never_rises_again(peak, final_share, total, warmup_share, data):
    final, warmup = peak * final_share, max(1.0, total * warmup_share)
    steps = sorted(data.draw(st.lists(st.integers(0, total), min_size=2, max_size=20)))
    schedule = [warmup_cosine(step, total, warmup, peak, final) for step in steps]
    assert all(-1e-12 <= v <= peak * (1 + 1e-12) for v in schedule)
    rising = [v for s, v in zip(steps, schedule) if s < warmup]
    falling = [v for s, v in zip(steps, schedule) if s >= warmup]
    assert all(b >= a for a, b in zip(rising, rising[1:]))
    assert all(b <= a + 1e-12 for a, b in zip(falling, falling[1:]))
    assert warmup_cosine(0, total, warmup, peak, final) == 0.0
    assert close(warmup_cosine(warmup, total, warmup, peak, final), peak)
    assert close(warmup_cosine(total, total, warmup, peak, final), final)


@given(warmup_temp=st.floats(0.01, 0.1), final_temp=st.floats(0.01, 0.1), warmup_epochs=st.integers(0, 50),
       epoch=st.integers(0, 200))
def test_teacher_temperature_moves_from_warmup_to_final_and_stays(warmup_temp, final_temp, warmup_epochs, epoch):
    value = teacher_temperature(epoch, warmup_temp, final_temp, warmup_epochs)
    assert min(warmup_temp, final_temp) - 1e-12 <= value <= max(warmup_temp, final_temp) + 1e-12
    # DINO's schedule is np.linspace(warmup, final, warmup_epochs) then final: one warm-up epoch is [warmup]
    if epoch >= warmup_epochs or (warmup_epochs > 1 and epoch == warmup_epochs - 1):
        assert close(value, final_temp)
    if warmup_epochs >= 1:
        assert close(teacher_temperature(0, warmup_temp, final_temp, warmup_epochs), warmup_temp)
    following = teacher_temperature(epoch + 1, warmup_temp, final_temp, warmup_epochs)
    assert (following - value) * (final_temp - warmup_temp) >= -1e-12  # never back towards the warm-up value


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 6), length=st.integers(1, 400), ratio=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_masking_keeps_the_stated_count_and_restore_is_the_inverse_permutation(batch, length, ratio, seed):
    visible, mask, restore = random_masking(batch, length, ratio, generator=torch.Generator().manual_seed(seed))
    keep = int(length * (1 - ratio))
    assert visible.shape == (batch, keep)
    assert mask.sum(dim=1).tolist() == [float(length - keep)] * batch
    for row in range(batch):
        assert sorted(restore[row].tolist()) == list(range(length))  # a permutation
        shuffled = torch.cat([visible[row], (mask[row] == 1).nonzero().flatten()])
        assert sorted(shuffled.tolist()) == list(range(length))  # visible and masked patches partition the grid
        assert (mask[row, visible[row]] == 0).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_train=st.integers(1, 60), n_query=st.integers(1, 20),
       classes=st.integers(2, 7), k=st.integers(1, 30))
def test_knn_vote_does_not_depend_on_the_order_of_the_database(seed, n_train, n_query, classes, k):
    generator = torch.Generator().manual_seed(seed)
    train = torch.nn.functional.normalize(torch.randn(n_train, 8, generator=generator), dim=1)
    labels = torch.randint(0, classes, (n_train,), generator=generator)
    queries = torch.nn.functional.normalize(torch.randn(n_query, 8, generator=generator), dim=1)
    query_labels = torch.randint(0, classes, (n_query,), generator=generator)
    order = torch.randperm(n_train, generator=generator)
    as_given = knn_classify(train, labels, queries, query_labels, [k], 0.07, classes)
    shuffled = knn_classify(train[order], labels[order], queries, query_labels, [k], 0.07, classes)
    assert as_given == shuffled
