import math

import torch
import torch.nn.functional as F

from sslkit.evaluate.knn import knn_classify, knn_predict


def test_knn_reaches_100_percent_on_a_trivially_separable_set():
    torch.manual_seed(0)
    centres = torch.eye(4, 16) * 10
    train_labels = torch.arange(4).repeat_interleave(25)
    val_labels = torch.arange(4).repeat_interleave(10)
    train = F.normalize(centres[train_labels] + torch.randn(100, 16), dim=1)
    val = F.normalize(centres[val_labels] + torch.randn(40, 16), dim=1)
    results = knn_classify(train, train_labels, val, val_labels, [1, 20], 0.07, 4, chunk_size=7)
    assert results == {1: {"top1": 100.0, "top5": 100.0}, 20: {"top1": 100.0, "top5": 100.0}}


def test_votes_are_weighted_by_exp_similarity_over_temperature():
    # one neighbour of class 0 at cos 1.0 against two of class 1 at cos 0.8:
    # class 0 weighs e^(1/0.07) = 1.6e6, class 1 2 e^(0.8/0.07) = 1.8e5, so class 0 wins with k = 3
    angle = math.acos(0.8)
    train = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)], [math.cos(angle), -math.sin(angle)]])
    train_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, train_labels, query, torch.tensor([0]), [3], 0.07, 2)[3]["top1"] == 100.0
    # a high temperature makes the vote a count: two class-1 neighbours beat one class-0 neighbour
    assert knn_classify(train, train_labels, query, torch.tensor([0]), [3], 100.0, 2)[3]["top1"] == 0.0


def test_top5_counts_a_hit_among_the_five_best_classes():
    train = torch.eye(6)
    train_labels = torch.arange(6)
    query = F.normalize(torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6, 0.0]]), dim=1)
    results = knn_classify(train, train_labels, query, torch.tensor([4]), [6], 0.07, 6)[6]
    assert results == {"top1": 0.0, "top5": 100.0}
    results = knn_classify(train, train_labels, query, torch.tensor([5]), [6], 0.07, 6)[6]
    assert results == {"top1": 0.0, "top5": 0.0}


def test_predictions_rank_classes_by_their_vote_for_each_k():
    # neighbours of the query by similarity: class 2 (1.0), then class 0 twice (0.9, 0.9), then class 1 (0.5)
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.436], [0.9, -0.436], [0.5, 0.866]]), dim=1)
    train_labels = torch.tensor([2, 0, 0, 1])
    query = torch.tensor([[1.0, 0.0], [0.5, 0.866]])
    ranked = knn_predict(train, train_labels, query, [1, 4], 100.0, 3, chunk_size=1)
    # k 1: the nearest neighbour's class first; k 4 at a high temperature: two class-0 votes beat one class-2 vote
    assert ranked[1][:, 0].tolist() == [2, 1]
    assert ranked[4].tolist() == [[0, 2, 1], [0, 1, 2]]


def test_probe_knn_fraction_is_the_memory_finetune_fraction_trains_on(tmp_path, monkeypatch):
    import sslkit
    from sslkit.data.folders import ImageFolder, balanced_subset
    from sslkit.evaluate.features import FrozenFeatures
    from tests.conftest import make_folder

    train = make_folder(tmp_path / "train", classes=3, per_class=10)
    val = make_folder(tmp_path / "val", classes=3, per_class=2, seed=1)
    memories = []
    original = FrozenFeatures.features

    def spy(self, dataset, label):
        memories.append((label, list(dataset.files)))
        return original(self, dataset, label)

    monkeypatch.setattr(FrozenFeatures, "features", spy)
    result = sslkit.probe_knn("timm:test_resnet", train, val, fraction=0.3, seed=4, k=[3], img_size=32, device="cpu",
                              workers=0, cache=False)
    folder = ImageFolder(train, labelled=True)
    expected = balanced_subset(folder.labels, 0.3, 4)  # what sslkit.finetune(..., fraction=0.3, seed=4) keeps
    assert result["num_train"] == len(expected) == 9 and result["fraction"] == 0.3
    assert memories[0] == ("train", [folder.files[i] for i in expected])
