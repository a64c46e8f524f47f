import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit.config import TextConfig, ViTConfig
from tinyvit.contrastive import (CLIP, clip_batch_loss, clip_logits, clip_loss, one_way_loss,
                                 shared_attribute_mask)

VISION = ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64, out_dim=16)
TEXT = TextConfig(vocab_size=40, context_length=8, dim=32, out_dim=16)


def tokens(B: int, T: int = 8) -> torch.Tensor:
    """Random captions: BOS, a few word ids, EOS, then padding."""
    out = torch.zeros(B, T, dtype=torch.long)
    for i in range(B):
        n = 2 + i % 4
        out[i, 0], out[i, 1:1 + n], out[i, 1 + n] = 2, torch.randint(4, TEXT.vocab_size, (n,)), 3
    return out


def test_clip_loss_matches_hand_computed_2x2():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # image -> text: row 0 picks column 0 out of (2, 0); row 1 picks column 1 out of (1, 3)
    i2t = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-2))) / 2
    # text -> image: column 0 picks row 0 out of (2, 1); column 1 picks row 1 out of (0, 3)
    t2i = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    assert one_way_loss(logits).item() == pytest.approx(i2t, rel=1e-6)
    assert clip_loss(logits).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_clip_loss_matches_log_sum_exp_on_3x3():
    logits = torch.tensor([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0], [0.0, 0.4, 1.5]])
    rows = [math.log(sum(math.exp(v) for v in logits[i].tolist())) - logits[i, i].item() for i in range(3)]
    cols = [math.log(sum(math.exp(v) for v in logits[:, j].tolist())) - logits[j, j].item() for j in range(3)]
    assert clip_loss(logits).item() == pytest.approx((sum(rows) / 3 + sum(cols) / 3) / 2, rel=1e-6)


def test_symmetric_loss_is_mean_of_both_cross_entropies_and_differs_from_one_way():
    logits = torch.randn(6, 6) * 3
    target = torch.arange(6)
    both = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(clip_loss(logits), both)
    assert abs(clip_loss(logits).item() - one_way_loss(logits).item()) > 1e-3
    with pytest.raises(ValueError, match=r"square \(B, B\) logits, got shape \(2, 3\)"):
        clip_loss(torch.zeros(2, 3))


def test_aligned_embeddings_give_lower_loss_than_shuffled():
    emb = F.normalize(torch.randn(16, 32), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    aligned = clip_loss(clip_logits(emb, emb, scale))
    shuffled = clip_loss(clip_logits(emb, emb[torch.roll(torch.arange(16), 1)], scale))
    assert aligned.item() < 0.1 < 5 < shuffled.item()


def test_clip_logits_are_scaled_cosines():
    img, txt = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    logits = clip_logits(img, txt, torch.tensor(math.log(10.0)))
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, 10 * F.cosine_similarity(img[:, None], txt[None], dim=-1))


def test_clip_shapes_normalised_embeddings_and_temperature_init():
    model = CLIP(VISION, TEXT)
    images, toks = torch.randn(4, 3, 16, 16), tokens(4)
    img, txt = model.encode_image(images), model.encode_text(toks)
    assert img.shape == txt.shape == (4, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    assert model(images, toks).shape == (4, 4)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.temperature == pytest.approx(0.07)
    assert model.configs() == {"vision": VISION.to_dict(), "text": TEXT.to_dict()}


def test_clamp_logit_scale_caps_at_log_max_scale():
    model = CLIP(VISION, TEXT)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale(100)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    assert model.temperature == pytest.approx(0.01)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.clamp_logit_scale(100)  # inside the range: untouched
    assert model.logit_scale.item() == 2.0


def test_temperature_and_both_towers_get_gradients():
    model = CLIP(VISION, TEXT)
    loss = clip_batch_loss(model, (torch.randn(4, 3, 16, 16), tokens(4)))
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    assert model.visual.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.text.parameters() if p.requires_grad)


def test_mismatched_embedding_sizes_raise():
    with pytest.raises(ValueError, match="ViTConfig.out_dim is 16, TextConfig.out_dim is 32"):
        CLIP(VISION, TextConfig(vocab_size=40, dim=32, out_dim=32))
    with pytest.raises(ValueError, match="init_temperature must be positive"):
        CLIP(VISION, TEXT, init_temperature=0.0)


def test_dropped_negatives_leave_the_loss_as_if_they_were_not_in_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    keep = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
    by_hand = []
    for i in range(4):  # image i against the captions it may be contrasted with, and caption i likewise
        row = logits[i][keep[i]]
        by_hand.append(-torch.log_softmax(row, 0)[keep[i][: i + 1].sum() - 1])
        col = logits[:, i][keep[:, i]]
        by_hand.append(-torch.log_softmax(col, 0)[keep[: i + 1, i].sum() - 1])
    torch.testing.assert_close(clip_loss(logits, keep), torch.stack(by_hand).mean())
    assert clip_loss(logits, keep) < clip_loss(logits)  # fewer negatives, lower loss
    torch.testing.assert_close(clip_loss(logits, torch.ones(4, 4, dtype=torch.bool)), clip_loss(logits))


def test_shared_attribute_mask_keeps_pairs_that_share_shape_or_colour():
    attributes = torch.tensor([[0, 2], [1, 2], [0, 3], [1, 4]])  # (shape, colour)
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(shared_attribute_mask(attributes), expected)
