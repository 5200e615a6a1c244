"""Evaluation metrics on crafted embeddings against hand-computed values."""
import pytest
import torch
import torch.nn.functional as F

from growclip_ds.eval.metrics import class_embeddings, recall_at_k, retrieval_metrics, topk_accuracy


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2, 2])
    # top1: rows 0 right; row1 predicts 2 (wrong); row2 predicts 1 (wrong); row3 predicts 0 (wrong) -> 1/4
    # top2: row0 yes; row1 {2,1} yes; row2 {1,2} yes; row3 {0,1} no -> 3/4
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {"top1": 0.25, "top2": 0.75, "top5": 1.0}


def test_recall_at_k_by_hand():
    # query 0: true 0.9 is best -> rank 0; query 1: true 0.2 beaten by 0.8 and 0.5 -> rank 2;
    # query 2: true 0.4 beaten by 0.7 -> rank 1
    sim = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.5], [0.7, 0.1, 0.4]])
    r = recall_at_k(sim, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})


def test_ties_count_against_the_query():
    sim = torch.ones(4, 4)  # collapsed embeddings: every candidate ties with the match
    assert recall_at_k(sim, ks=(1, 4)) == {"R@1": 0.0, "R@4": 1.0}


def test_retrieval_both_directions():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.5, 0.5]]), dim=-1)
    m = retrieval_metrics(img, txt, ks=(1,))
    # image->text: img0 best text1 (1.0) not text0 -> miss; img1 best text2 -> miss; img2 best text2 -> hit
    assert m["image_to_text"]["R@1"] == pytest.approx(1 / 3)
    # text->image: t0 best img0 hit; t1 best img0 miss; t2 best img2 hit
    assert m["text_to_image"]["R@1"] == pytest.approx(2 / 3)


def test_prompt_ensemble_is_renormalised_mean():
    p = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]), dim=-1)
    c = class_embeddings(p)
    s = 2 ** -0.5
    torch.testing.assert_close(c, torch.tensor([[s, s], [1.0, 0.0]]))


def test_several_captions_per_image_by_hand():
    # sim[i, j]: image i, caption j; captions 0 and 1 are image 0's, caption 2 is image 1's
    sim = torch.tensor([[0.5, 0.9, 0.7], [0.8, 0.1, 0.6]])
    m = retrieval_metrics(sim, torch.eye(3), text_image=[0, 0, 1], ks=(1, 2))
    # image 0: its best caption (0.9) beats every other -> hit; image 1: its 0.6 is beaten by 0.8 -> rank 1
    assert m["image_to_text"] == pytest.approx({"R@1": 0.5, "R@2": 1.0})
    # caption 0: image 1 scores 0.8 > 0.5 -> miss; caption 1: hit; caption 2: image 0's 0.7 > 0.6 -> miss
    assert m["text_to_image"] == pytest.approx({"R@1": 1 / 3, "R@2": 1.0})
