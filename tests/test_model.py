import dataclasses
import math

import pytest
import torch
from torch import nn

from tinyvit import Attention, Block, ViTConfig, VisionEncoder, VisionTransformer, param_report, resample_pos_embed
from tinyvit.model import Dropout, Linear, linear
from tinyvit.patches import patchify

SMALL = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64)


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


def test_explicit_and_fused_attention_agree():
    attn = Attention(SMALL).eval()
    x = torch.randn(3, 17, SMALL.dim)
    with torch.no_grad():  # without gradients, the fused kernel
        fast, none = attn(x)
    explicit, weights = attn(x, return_attention=True)
    assert none is None and weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


def test_cpu_training_takes_the_explicit_path_with_the_same_outputs_and_gradients(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(dataclasses.replace(SMALL, dropout=0.0)).train()  # no dropout: both runs draw no masks
    x = torch.randn(3, 17, SMALL.dim)
    fused_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: fused_calls.append(1) or sdpa(*a, **k))
    results = {}
    for explicit in (True, False):
        monkeypatch.setattr(Attention, "explicit_for_cpu_grad", explicit)
        fused_calls.clear()
        attn.zero_grad()
        out, weights = attn(x)
        out.square().sum().backward()
        assert weights is None  # the weights are only returned when asked for
        assert len(fused_calls) == (0 if explicit else 1)
        results[explicit] = out, [p.grad.clone() for p in attn.parameters()]
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    for g_explicit, g_fused in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(g_explicit, g_fused, atol=1e-5, rtol=1e-4)
    # Inference and the CLS-only queries stay on the fused kernel.
    fused_calls.clear()
    monkeypatch.setattr(Attention, "explicit_for_cpu_grad", True)
    with torch.no_grad():
        attn(x)
    attn(x, queries=1)
    assert len(fused_calls) == 2


@pytest.mark.skipif(not Linear.onednn, reason="this PyTorch build has no oneDNN linear kernel")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out", [48, 16])  # wider and narrower than the input: two ways to the weight's gradient
def test_linear_through_onednn_gives_f_linears_outputs_and_gradients(bias, out, monkeypatch):
    torch.manual_seed(0)
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or kernel(*a))
    w = torch.randn(out, 32, requires_grad=True)
    b = torch.randn(out, requires_grad=True) if bias else None
    base = torch.randn(3, 11, 40, requires_grad=True)
    x = base[..., 4:36]  # (3, 11, 32), not contiguous
    weights = [w] + ([b] if bias else [])
    out = linear(x, w, b)
    out.square().sum().backward()
    assert len(calls) == 3  # forward, input gradient, weight gradient
    got = [out.detach(), base.grad.clone()] + [p.grad.clone() for p in weights]
    for t in [base] + weights:
        t.grad = None
    expected = torch.nn.functional.linear(x, w, b)
    expected.square().sum().backward()
    for a, e in zip(got, [expected.detach(), base.grad] + [p.grad for p in weights]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
    assert got[2].is_contiguous()  # the weight's gradient has the weight's layout
    with torch.no_grad():  # inference: straight to the kernel, no autograd function
        torch.testing.assert_close(linear(x, w, b), expected.detach(), rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps torch's own path, in bfloat16
        assert linear(x, w, b).dtype == torch.bfloat16 and not calls
    monkeypatch.setattr(Linear, "onednn", False)
    assert torch.equal(linear(x, w, b), expected) and not calls  # switched off: F.linear itself


def test_flop_counter_counts_the_onednn_linear_as_it_counts_f_linear(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    x, w, b = torch.randn(2, 7, 16, requires_grad=True), torch.randn(24, 16, requires_grad=True), torch.randn(24)
    counts = []
    for onednn in (True, False):
        monkeypatch.setattr(Linear, "onednn", onednn)
        with FlopCounterMode(display=False) as counter:
            linear(x, w, b).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 14 * 16 * 24  # forward, input and weight gradients


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    layer = Linear(8, 4)
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    plain = nn.Linear(8, 4)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), plain(x))


def test_attention_mask_hides_keys_on_both_paths():
    attn = Attention(SMALL).eval()
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
    attn = Attention(SMALL).eval()
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


def closed_form_params(cfg: ViTConfig) -> dict[str, int]:
    D, M = cfg.dim, cfg.mlp_dim
    block = 2 * (2 * D) + (D * 3 * D + 3 * D) + (D * D + D) + (D * M + M) + (M * D + D)
    parts = {
        "patch embedding": cfg.patch_dim * D + D,
        "CLS token": D,
        "position embeddings": cfg.num_tokens * D,
        "blocks": cfg.depth * block,
        "final norm": 2 * D,
        "projector": D * cfg.out_dim,
    }
    parts["total"] = sum(parts.values())
    return parts


@pytest.mark.parametrize("cfg", [ViTConfig(), SMALL])
def test_parameter_counts_match_the_closed_form(cfg):
    report = dict(param_report(VisionEncoder(cfg)))
    expected = closed_form_params(cfg)
    for name in ("patch embedding", "CLS token", "position embeddings", "final norm", "projector", "total"):
        assert report[name] == expected[name], name
    assert sum(report[f"block {i + 1}"] for i in range(cfg.depth)) == expected["blocks"]
    assert report["total"] == sum(p.numel() for p in VisionEncoder(cfg).parameters())


def test_param_report_rows_in_order():
    names = [name for name, _ in param_report(VisionTransformer(SMALL))]
    assert names == ["patch embedding", "CLS token", "position embeddings", "block 1", "block 2", "final norm", "total"]


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
    block = Block(SMALL).eval()
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


def test_init_is_vit_style():
    model = VisionEncoder(ViTConfig())
    assert 0.01 < model.pos_embed.std().item() < 0.03
    assert model.pos_embed.abs().max().item() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations
    assert 0.01 < model.blocks[0].mlp.fc1.weight.std().item() < 0.03
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones(128))
    assert model.projector.bias is None


def test_resampling_to_the_same_grid_is_the_identity():
    pos = torch.randn(1, 197, 8)
    assert resample_pos_embed(pos, (14, 14)) is pos


def test_resampling_keeps_cls_and_smooth_fields():
    # A position field that is a linear ramp over the grid stays (nearly) a ramp after resampling.
    g, new = 4, 8
    ramp = torch.linspace(0, 1, g).repeat(g, 1)  # (g, g), varies along columns
    pos = torch.cat([torch.full((1, 1, 1), 7.0), ramp.reshape(1, g * g, 1)], dim=1)
    out = resample_pos_embed(pos, (new, new))
    assert out.shape == (1, 1 + new * new, 1)
    assert out[0, 0, 0].item() == 7.0
    grid = out[0, 1:, 0].view(new, new)
    assert torch.all(grid[:, 1:] >= grid[:, :-1] - 1e-3)  # still increasing left to right
    torch.testing.assert_close(grid[:, 0], grid[0, 0].expand(new))  # constant down each column


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


def test_dropout_zeroes_a_share_p_and_keeps_the_mean():
    drop = Dropout(0.25)
    x = torch.ones(200_000)
    y = drop(x)
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.25) < 0.01
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.75)))
    assert abs(y.mean().item() - 1.0) < 0.01
    drop.eval()
    assert drop(x) is x


def test_dropout_gradient_is_the_scaled_mask():
    drop = Dropout(0.5)
    x = torch.randn(1000, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.0"):
        Dropout(1.0)


def test_sincos_positions_encode_row_and_column():
    from tinyvit import sincos_positions

    table = sincos_positions(4, 8)  # 16 slots; per axis 2 frequencies (1 and 1/100), sine then cosine
    assert table.shape == (16, 8)
    slot = 1 * 4 + 2  # row 1, column 2
    expected = torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
                             math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    torch.testing.assert_close(table[slot], expected)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 6)


def test_attention_for_the_first_queries_equals_the_full_rows():
    torch.manual_seed(0)
    attn = Attention(SMALL).eval()
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


def test_cpu_inference_runs_large_batches_in_slices_with_the_same_results():
    torch.manual_seed(0)
    model = VisionEncoder(SMALL).eval()  # 17 tokens per image
    images = torch.randn(10, 3, 32, 32)
    model.slice_tokens = 40  # 2 images per slice
    sizes = []
    hook = model.patch_embed.register_forward_hook(lambda m, args, out: sizes.append(out.shape[0]))
    with torch.no_grad():
        sliced = model(images), model.forward_features(images), model.forward_features(images, return_attention=True)
    assert sizes == [2] * 15
    model.slice_tokens = None
    with torch.no_grad():
        whole = model(images), model.forward_features(images), model.forward_features(images, return_attention=True)
    torch.testing.assert_close(sliced[0], whole[0])
    torch.testing.assert_close(sliced[1], whole[1])
    torch.testing.assert_close(sliced[2][0], whole[2][0])
    for a, b in zip(sliced[2][1], whole[2][1]):
        assert a.shape == (10, SMALL.heads, 17, 17)
        torch.testing.assert_close(a, b)
    model.slice_tokens, sizes[:] = 40, []
    model(images)  # with autograd on: one batch, so gradients flow as usual
    assert sizes == [10]


def test_keep_mask_drops_p_of_the_entries_from_uniform_16_bit_lanes():
    from tinyvit.model import keep_mask

    torch.manual_seed(0)
    mask = keep_mask((1000, 400), 0.1)
    assert mask.shape == (1000, 400) and mask.dtype == torch.bool
    dropped = (~mask).float()
    assert abs(dropped.mean().item() - 0.1) < 0.003
    for lane in range(4):  # each of the four 16-bit lanes cut from one 64-bit draw drops its share
        assert abs(dropped.flatten()[lane::4].mean().item() - 0.1) < 0.005
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 400), 0.1), mask)  # the global seed decides it
    assert keep_mask((7,), 0.0).all() and keep_mask((3, 5), 0.5).shape == (3, 5)


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
