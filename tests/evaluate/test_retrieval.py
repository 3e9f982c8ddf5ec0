import pytest
import torch
import torch.nn.functional as F

from sslkit.evaluate.retrieval import positive_ranks, ranking_scores, search, trapezoid_ap


def test_trapezoid_ap_against_hand_computed_values():
    assert trapezoid_ap([0], 1) == 1.0
    assert trapezoid_ap([1], 1) == pytest.approx(0.25)  # (0/1 + 1/2) / 2
    # positives at ranks 0 and 2: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2
    assert trapezoid_ap([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert trapezoid_ap([1], 2) == pytest.approx(0.125)  # the second positive was never retrieved
    assert trapezoid_ap([], 3) == 0.0


def test_a_positive_tied_with_a_negative_ranks_after_it():
    assert positive_ranks([0.9, 0.8, 0.8, 0.5], [False, True, False, False]) == [2]
    assert positive_ranks([0.9, 0.8, 0.8, 0.5], [False, False, True, True]) == [2, 3]
    assert positive_ranks([0.7, 0.7, 0.7], [True, False, False]) == [2]  # constant scores earn nothing


def test_ranking_scores_against_a_hand_computed_ranking():
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.95, 0.6, 0.6], [0.99, 0.1, 0.0]])
    indices = torch.tensor([[5, 2, 7], [1, 3, 4], [0, 1, 2]])
    positives = [{2}, {1, 4}, set()]  # the second query has two copies, the third none
    result = ranking_scores(scores, indices, positives, recall_at=(1, 2, 3))
    assert result["ap"][0] == pytest.approx(0.25)
    assert result["ap"][1] == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)  # its second copy ties with a negative
    assert result["ap"][2] is None
    assert result["map"] == pytest.approx((0.25 + 0.5 + (0.5 + 2 / 3) / 4) / 2)
    # pooled by score (negatives first among ties): F T F T F F T F F, three positives in all
    assert result["micro_ap"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 7) / 3)
    assert result["recall@1"] == 0.5 and result["recall@2"] == 1.0 and result["recall@3"] == 1.0
    assert "recall@10" not in result


def test_search_finds_the_exact_nearest_neighbours_and_chunking_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(9, 16, generator=generator), dim=1)
    database = torch.randn(50, 16, generator=generator)
    prepare = lambda chunk: F.normalize(chunk, dim=1)  # noqa: E731
    whole = search(queries, [database], 5, prepare, chunk_size=10_000, query_chunk=10_000)
    expected = (queries @ F.normalize(database, dim=1).T).topk(5, dim=1)
    assert torch.equal(whole[1], expected.indices)
    torch.testing.assert_close(whole[0], expected.values)
    for chunk_size, query_chunk in ((7, 2), (1, 1), (13, 4)):
        chunked = search(queries, [database[:20], database[20:]], 5, prepare, chunk_size=chunk_size,
                         query_chunk=query_chunk)
        assert torch.equal(chunked[1], whole[1])
        torch.testing.assert_close(chunked[0], whole[0])


def test_equal_scores_rank_by_database_index_whatever_the_chunks():
    vectors = torch.eye(3)
    database = vectors[torch.tensor([2, 0, 1, 0, 2, 0, 1, 0, 0, 2])]  # exact duplicates: exact ties
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[1, 3, 5, 7], [0, 4, 9, 1]])  # copies first by index, then the rest by index
    for chunk_size in (1, 2, 3, 4, 10):
        scores, indices = search(queries, [database], 4, chunk_size=chunk_size)
        assert torch.equal(indices, expected), chunk_size
        assert scores[0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_search_keeps_at_most_the_database_size():
    scores, indices = search(torch.ones(2, 4), [torch.ones(3, 4)], 10)
    assert scores.shape == (2, 3) and indices[0].tolist() == [0, 1, 2]
