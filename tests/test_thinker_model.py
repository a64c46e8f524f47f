"""tinyvit.thinker.model: the Thinker network, whitening, image tokens and generation."""
import dataclasses

import numpy as np
import pytest
import torch

from tinyvit.config import ThinkerConfig, ViTConfig
from tinyvit.model import VisionEncoder
from tinyvit.text import EOS_ID
from tinyvit.thinker import Thinker, generate, image_tokens, whitening

TINY = ThinkerConfig(vocab_size=40, dim=32, depth=2, heads=2, mlp_dim=64, context_length=12)
TINY_VIT = ViTConfig(image_size=16, patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32, out_dim=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_chapter_image_token_and_five_text_tokens_make_six():
    cfg = dataclasses.replace(TINY, dim=256, heads=4)
    model = Thinker(cfg)
    image = torch.randn(1, 1, 256)  # the chapter's (1, 256) image token, batched
    ids = torch.tensor([[15, 23, 8, 4, 16]])  # five text tokens
    assert model.token_embed(ids).shape == (1, 5, 256)
    assert model.embed(image, ids).shape == (1, 6, 256)
    assert model(image, ids).shape == (1, 6, cfg.vocab_size)


def test_all_variant_takes_n_tokens_and_refuses_the_wrong_count():
    model = Thinker(dataclasses.replace(TINY, variant="all", image_tokens=5))
    assert model(torch.randn(2, 5, 32), torch.ones(2, 3, dtype=torch.long)).shape == (2, 8, 40)
    with pytest.raises(ValueError, match=r"expected image tokens \(B, 5, 32\).*got \(2, 1, 32\)"):
        model(torch.randn(2, 1, 32), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="variant 'cls' hands over exactly 1 image token"):
        ThinkerConfig(variant="cls", image_tokens=5)


def test_image_tokens_are_the_projected_cls_or_all_tokens():
    encoder = VisionEncoder(TINY_VIT).eval()
    images = torch.randn(3, 3, 16, 16)
    cls = image_tokens(encoder, images, "cls")
    every = image_tokens(encoder, images, "all")
    assert cls.shape == (3, 1, 32) and every.shape == (3, TINY_VIT.num_tokens, 32)
    torch.testing.assert_close(cls[:, 0], encoder(images))  # the chapter's (1, 256) is the encoder's output
    torch.testing.assert_close(every[:, :1], cls)
    assert not cls.requires_grad and not every.requires_grad  # no graph, even for an encoder that could learn


def test_a_token_never_sees_later_tokens():
    model = Thinker(TINY).eval()
    image, ids = torch.randn(2, 1, 32), torch.randint(4, 40, (2, 8))
    changed = ids.clone()
    changed[:, 5] = (ids[:, 5] + 1 - 4) % 36 + 4  # another token at text position 5 = sequence position 6
    before, after = model(image, ids), model(image, changed)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_whitening_gives_the_training_tokens_unit_variance_in_every_direction_they_use():
    # Tokens that use 6 of 32 directions, with variances from 100 down to 1e-4, and an offset.
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 6, generator=generator))[0]  # (32, 6) orthonormal columns
    scales = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1, 0.01])
    tokens = (torch.randn(4000, 6, generator=generator) * scales) @ basis.T + 5.0  # (4000, 32)
    model = Thinker(dataclasses.replace(TINY, whiten=True))
    assert torch.equal(model.image_whitener, torch.eye(32))  # identity until set
    model.set_whitening(tokens[:, None], eps=1e-8)
    white = (tokens - model.image_mean) @ model.image_whitener  # (4000, 32)
    variances = torch.linalg.eigvalsh(torch.cov(white.T.double()))
    torch.testing.assert_close(variances[-6:], torch.ones(6, dtype=torch.float64), atol=0.02, rtol=0)  # all alike
    assert variances[:-6].abs().max() < 1e-3  # the 26 unused directions stay at ~0
    torch.testing.assert_close(white.mean(0), torch.zeros(32), atol=1e-3, rtol=0)
    # The whitened token is what the image LayerNorm reads, and the buffers travel in the state dict.
    ids = torch.ones(2, 3, dtype=torch.long)
    image = tokens[:2, None]
    expected = model.image_norm(white[:2]) + model.pos_embed[0, 0]
    torch.testing.assert_close(model.embed(image, ids)[:, 0], expected, atol=1e-4, rtol=1e-4)
    clone = Thinker(dataclasses.replace(TINY, whiten=True))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.embed(image, ids), model.embed(image, ids))
    assert "image_whitener" not in Thinker(TINY).state_dict()  # off by default: older Thinkers load unchanged
    with pytest.raises(ValueError, match="whiten=False"):
        Thinker(TINY).set_whitening(tokens[:, None])
    with pytest.raises(ValueError, match="whiten must be True or False"):
        ThinkerConfig(whiten="yes")


def test_whitening_in_chunks_equals_the_covariance_in_one_piece():
    tokens = torch.randn(70_000, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([3.0, 1.0, 0.5, 0.1])
    mean, whitener = whitening(tokens, eps=1e-6)  # 70,000 rows: two chunks
    variances, vectors = torch.linalg.eigh(torch.cov(tokens.T.double()))
    expected = vectors @ torch.diag((variances + 1e-6 * variances.max()).rsqrt()) @ vectors.T
    torch.testing.assert_close(mean, tokens.double().mean(0).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(whitener, expected.float(), atol=1e-4, rtol=1e-4)


class Scripted(Thinker):
    """Emits `script[i]` as the i-th new token whatever the input (a fixed logits table), to test the loop."""

    def __init__(self, script, ties=False):
        super().__init__(TINY)
        self.script, self.ties, self.prompt = script, ties, None

    def forward(self, image_tokens, ids):
        B, T = ids.shape
        self.prompt = self.prompt or T
        logits = torch.zeros(B, 1 + T, self.cfg.vocab_size)
        token = self.script[min(T - self.prompt, len(self.script) - 1)]
        logits[:, -1, token] = 5.0
        if self.ties:
            logits[:, -1, token + 1] = 5.0
        return logits


def test_generation_stops_at_eos_and_respects_the_length_limit():
    image, prompt = torch.zeros(2, 1, 32), torch.full((2, 3), 5)
    assert generate(Scripted([11, 12, EOS_ID, 13]), image, prompt) == [[11, 12], [11, 12]]
    assert generate(Scripted([11]), image, prompt, max_new_tokens=4) == [[11] * 4, [11] * 4]
    # The context holds 12 text tokens: a 3-token prompt leaves room for 9 new ones whatever is asked.
    assert len(generate(Scripted([11]), image, prompt, max_new_tokens=50)[0]) == TINY.context_length - 3


def test_sampling_follows_the_seeded_distribution():
    image, prompt = torch.zeros(200, 1, 32), torch.full((200, 3), 5)
    greedy = generate(Scripted([20], ties=True), image, prompt, max_new_tokens=1)
    assert {row[0] for row in greedy} == {20}  # argmax takes the first of two tied tokens
    draw = lambda seed: generate(Scripted([20], ties=True), image, prompt, max_new_tokens=1, temperature=1.0,
                                 generator=torch.Generator().manual_seed(seed))
    counts = np.bincount([row[0] for row in draw(0)], minlength=40)
    assert counts[20] + counts[21] > 150 and counts[20] > 50 and counts[21] > 50  # both likely tokens drawn
    assert draw(1) == draw(1) and draw(1) != draw(2)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(Scripted([20]), image, prompt, temperature=-1.0)


def test_a_packed_row_equals_its_pairs_run_alone():
    model = Thinker(dataclasses.replace(TINY, variant="all", image_tokens=3)).eval()
    image = torch.randn(1, 3, 32)
    pairs = [torch.randint(4, 40, (n,)) for n in (5, 7, 4)]
    # Three pairs and more padding than the context holds (padding must not need positions of its own).
    packed = torch.cat(pairs + [torch.zeros(15, dtype=torch.long)])[None]  # (1, 31)
    segments = torch.cat([torch.full((len(p),), j + 1) for j, p in enumerate(pairs)] + [torch.full((15,), -1)])[None]
    together = model(image, packed, segments)  # (1, 3 + 31, V)
    start = 3
    for j, pair in enumerate(pairs):
        alone = model(image, pair[None])  # (1, 3 + n, V)
        torch.testing.assert_close(together[:, start : start + len(pair)], alone[:, 3:], rtol=1e-4, atol=1e-5)
        start += len(pair)
    torch.testing.assert_close(together[:, :3], model(image, pairs[0][None])[:, :3], rtol=1e-4, atol=1e-5)
