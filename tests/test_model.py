import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from tinyvit import Attention, Block, TextConfig, TextEncoder, ViTConfig, VisionEncoder, VisionTransformer, init_weights
from tinyvit.patches import patchify

SMALL = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64)
FIXTURE = Path(__file__).parent / "fixtures" / "model_before.pt"


def small_attention(**kwargs) -> Attention:
    return Attention(SMALL.dim, SMALL.heads, **kwargs)


@pytest.fixture(scope="module")
def chapter_model():
    torch.manual_seed(0)
    return VisionEncoder(ViTConfig()).eval()


def test_every_shape_the_chapter_states(chapter_model):
    m, cfg = chapter_model, ViTConfig()
    images = torch.randn(2, 3, 224, 224)  # step 1: (3, 224, 224) per image
    assert images[0].numel() == 150_528
    assert patchify(images, cfg.patch_size).shape == (2, 196, 768)  # step 2
    with torch.no_grad():
        patches = m.patch_embed(images)
        assert patches.shape == (2, 196, 128)  # step 3
        tokens = m.forward_features(images)
        assert tokens.shape == (2, 197, 128)  # steps 4-5
        cls = m.forward_features(images)[:, 0]
        assert cls.shape == (2, 128)  # step 6
        emb = m(images)
        assert emb.shape == (2, 256)  # step 7
        torch.testing.assert_close(emb, m.projector(cls))


def test_return_attention_contract(chapter_model):
    with torch.no_grad():
        emb, attentions = chapter_model(torch.randn(2, 3, 224, 224), return_attention=True)
    assert emb.shape == (2, 256)
    assert len(attentions) == 4
    for weights in attentions:
        assert weights.shape == (2, 2, 197, 197)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 197))
        assert (weights >= 0).all()


def test_explicit_and_fused_attention_agree_forward_and_backward():
    torch.manual_seed(0)
    fused = small_attention().train()
    explicit = small_attention(fused=False).train()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 17, SMALL.dim)
    results = []
    for attn in (fused, explicit):
        out, weights = attn(x)
        assert weights is None  # the weights only when asked for, on either path
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in attn.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        same, weights = fused(x, return_attention=True)  # asking for the weights takes the explicit path
    assert weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(same, results[0][0], atol=1e-5, rtol=1e-5)


def record(model: VisionEncoder, images: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> dict:
    """What the fixture recorded: outputs (with and without autograd), attention weights, and the parameter
    gradients of two simple losses, in training mode (dropout 0); one block's output and input gradient, masked."""
    out = {}
    model.train()
    with torch.no_grad():
        out["embedding_nograd"], out["features_nograd"] = model(images), model.forward_features(images)
    model.zero_grad()
    emb, feats = model(images), model.forward_features(images)
    (emb.square().sum() + feats.square().mean()).backward()
    out["embedding"], out["features"] = emb.detach(), feats.detach()
    out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    emb, attentions = model(images, return_attention=True)
    (emb.sum() + sum(a.square().sum() for a in attentions)).backward()
    out["embedding_att"], out["attentions"] = emb.detach(), torch.stack([a.detach() for a in attentions])
    out["grads_att"] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    y, _ = model.blocks[0](x, attn_mask=mask)
    y.square().sum().backward()
    out["block_masked"], out["block_masked_grad_x"] = y.detach(), x.grad
    return out


def assert_close_nested(expected, got, where=""):
    if isinstance(expected, dict):
        assert set(expected) == set(got), where
        for key in expected:
            assert_close_nested(expected[key], got[key], f"{where}/{key}")
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: {m}")


def test_the_model_computes_what_it_computed_before_from_the_same_weights():
    saved = torch.load(FIXTURE, weights_only=True)  # recorded by the previous model code: tests/fixtures/README.md
    model = VisionEncoder(ViTConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["state_dict"])  # the same state_dict keys
    assert_close_nested(saved["expected"], record(model, saved["images"], saved["x"], saved["mask"]))


def test_the_chapter_model_draws_the_same_weights_and_computes_the_same_as_before():
    saved = torch.load(FIXTURE, weights_only=True)
    chapter = saved["chapter"]  # its weights are kept as per-parameter sums, its gradients as sums and norms
    torch.manual_seed(chapter["seed"])
    model = VisionEncoder(ViTConfig.from_dict(chapter["config"]))  # the init draws the numbers it drew before
    assert_close_nested(chapter["param_sums"], {n: p.detach().double().sum() for n, p in model.named_parameters()})
    out = record(model, saved["images"], chapter["x"], saved["mask"])
    for key in ("grads", "grads_att"):
        grads = out.pop(key)
        out[key + "_sum"] = {n: g.double().sum() for n, g in grads.items()}
        out[key + "_norm"] = {n: g.double().norm() for n, g in grads.items()}
    assert_close_nested(chapter["expected"], out)


def test_attention_mask_hides_keys_on_both_paths():
    attn = small_attention().eval()
    x = torch.randn(2, 6, SMALL.dim)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, :, 4:] = False  # the first sequence's last two tokens are padding
    with torch.no_grad():  # the fused kernel
        fast, _ = attn(x, attn_mask=mask)
    explicit, weights = attn(x, return_attention=True, attn_mask=mask)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)
    assert weights[0, :, :, 4:].abs().max() == 0
    # Changing the hidden tokens changes nothing the visible ones see, on either path.
    x2 = x.clone()
    x2[0, 4:] += 10
    with torch.no_grad():
        torch.testing.assert_close(attn(x2, attn_mask=mask)[0][0, :4], fast[0, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x2, attn_mask=mask)[0][0, :4], fast[0, :4], atol=1e-5, rtol=1e-5)


def test_attention_written_out_by_hand():
    attn = small_attention().eval()
    x = torch.randn(1, 5, SMALL.dim)
    D, h = SMALL.dim, SMALL.heads
    Dh = D // h
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(D, dim=-1)
    heads = []
    for i in range(h):
        s = slice(i * Dh, (i + 1) * Dh)
        scores = q[0, :, s] @ k[0, :, s].T / Dh**0.5
        heads.append(torch.softmax(scores, dim=-1) @ v[0, :, s])
    expected = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x)[0][0], expected, atol=1e-5, rtol=1e-5)


def reference_encoder(model: VisionTransformer) -> nn.TransformerEncoder:
    """The source system's design: PyTorch's own pre-norm encoder layers, weights copied from tinyvit's blocks."""
    cfg = model.cfg
    layer = nn.TransformerEncoderLayer(
        cfg.dim, cfg.heads, cfg.mlp_dim, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True
    )
    ref = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
    with torch.no_grad():
        for mine, theirs in zip(model.blocks, ref.layers):
            theirs.norm1.load_state_dict(mine.norm1.state_dict())
            theirs.norm2.load_state_dict(mine.norm2.state_dict())
            theirs.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
            theirs.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.attn.proj.state_dict())
            theirs.linear1.load_state_dict(mine.mlp.fc1.state_dict())
            theirs.linear2.load_state_dict(mine.mlp.fc2.state_dict())
    return ref.eval()


@pytest.mark.parametrize("cfg", [ViTConfig(), SMALL])
def test_blocks_match_torch_transformer_encoder_layers(cfg):
    model = VisionTransformer(cfg).eval()
    ref = reference_encoder(model)
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        x = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(images)], dim=1) + model.pos_embed
        expected = model.norm(ref(x))
        torch.testing.assert_close(model.forward_features(images), expected, atol=1e-5, rtol=1e-5)


def test_block_is_pre_norm_residual():
    block = Block(SMALL.dim, SMALL.heads, SMALL.mlp_dim).eval()
    x = torch.randn(2, 5, SMALL.dim)
    y = x + block.attn(block.norm1(x))[0]
    y = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x)[0], y)


def test_every_parameter_gets_a_gradient():
    model = VisionEncoder(SMALL)
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_same_seed_same_model_and_output():
    images = torch.randn(2, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(VisionEncoder(SMALL).eval()(images))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_dropout_only_in_training():
    model = VisionEncoder(SMALL)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(images), model(images))


def test_one_init_cuts_at_two_standard_deviations_for_every_model():
    layer = nn.Linear(2000, 100)
    init_weights(nn.Sequential(layer, nn.LayerNorm(4)))
    assert layer.weight.abs().max().item() <= 0.04 and 0.015 < layer.weight.std().item() < 0.02
    assert torch.count_nonzero(layer.bias) == 0
    text = TextEncoder(TextConfig(vocab_size=500, kind="transformer"))  # the text encoder uses the same init
    for module in text.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            assert module.weight.abs().max().item() <= 0.04


def test_init_is_vit_style():
    model = VisionEncoder(ViTConfig())
    assert 0.01 < model.pos_embed.std().item() < 0.03
    assert model.pos_embed.abs().max().item() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations
    assert 0.01 < model.blocks[0].mlp.fc1.weight.std().item() < 0.03
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones(128))
    assert model.projector.bias is None


def test_other_image_sizes_need_interpolate_pos():
    model = VisionEncoder(SMALL).eval()
    message = r"gives a 6x6 patch grid, but the position embeddings cover 4x4.*interpolate_pos=True"
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 48, 48))
    assert model(torch.randn(1, 3, 48, 48), interpolate_pos=True).shape == (1, SMALL.out_dim)
    assert model.forward_features(torch.randn(1, 3, 48, 24), interpolate_pos=True).shape == (1, 1 + 18, SMALL.dim)


def test_bad_inputs_reach_the_model_as_clear_errors():
    model = VisionEncoder(SMALL)
    with pytest.raises(ValueError, match="expected 3 channels, got 4"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected a float tensor"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim 32 is not divisible by heads 3"):
        VisionEncoder(dataclasses.replace(SMALL, heads=3))


def test_encode_image_is_unit_length():
    emb = VisionEncoder(SMALL).eval().encode_image(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_attention_for_the_first_queries_equals_the_full_rows():
    torch.manual_seed(0)
    attn = small_attention().eval()
    x = torch.randn(3, 17, SMALL.dim)
    full, _ = attn(x)
    for q in (1, 5):
        part, _ = attn(x, queries=q)
        assert part.shape == (3, q, SMALL.dim)
        torch.testing.assert_close(part, full[:, :q])


def test_cls_forward_skips_the_last_blocks_other_tokens_but_gives_the_same_embedding_and_gradients():
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, dropout=0.0)
    model = VisionEncoder(cfg)
    images = torch.randn(4, 3, 32, 32)
    pooled = model(images)  # the last block updates the CLS token only
    full = model.projector(model.forward_features(images)[:, 0])  # every token through every block
    torch.testing.assert_close(pooled, full)
    grads = []
    for out in (pooled, full):
        model.zero_grad()
        out.square().sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    calls = []
    hook = model.blocks[-1].mlp.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    model(images)
    hook.remove()
    assert calls == [(4, 1, cfg.dim)]  # the last MLP ran on one token per image


def test_positions_can_start_from_the_sine_cosine_table():
    from tinyvit import sincos_positions

    torch.manual_seed(0)
    normal = VisionEncoder(SMALL)
    torch.manual_seed(0)
    sincos = VisionEncoder(dataclasses.replace(SMALL, pos_init="sincos"))
    torch.testing.assert_close(sincos.pos_embed[0, 1:], sincos_positions(SMALL.grid_size, SMALL.dim))
    torch.testing.assert_close(sincos.pos_embed[0, 0], normal.pos_embed[0, 0])  # CLS keeps its trunc-normal start
    for (name, a), (_, b) in zip(normal.named_parameters(), sincos.named_parameters()):
        if name != "pos_embed":  # everything else draws the same numbers
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pos_init must be 'normal' or 'sincos', got 'learned'"):
        ViTConfig(pos_init="learned")
    with pytest.raises(ValueError, match="pos_init 'sincos' needs dim divisible by 4, got 6"):
        ViTConfig(dim=6, heads=2, pos_init="sincos")
