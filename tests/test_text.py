import re

import pytest
import torch

from tinyvit.config import TextConfig
from tinyvit.data import ShapesDataset
from tinyvit.model import Block
from tinyvit.text import TextEncoder, Tokenizer


@pytest.fixture(scope="module")
def captions():
    return ShapesDataset(1000, seed=0).captions + ShapesDataset(200, split="heldout").captions


@pytest.fixture(scope="module")
def tokenizer(captions):
    return Tokenizer.train(captions, vocab_size=128)


# --- tokenizer -----------------------------------------------------------------------------------------------------

def test_captions_round_trip(tokenizer, captions):
    assert tokenizer.vocab_size == 128
    for caption in captions:
        ids = tokenizer.encode(caption)
        assert tokenizer.decode(ids) == caption
        assert min(ids) > tokenizer.eos_id  # no specials, no unknowns inside a caption
    assert len(tokenizer.encode("a red circle")) < len("a red circle")  # sub-words, not characters


def test_special_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    ids = tokenizer.encode("a red star")
    assert tokenizer.decode([2] + ids + [3, 0, 0]) == "a red star"  # specials are skipped
    assert tokenizer.decode(torch.tensor([2] + ids + [3])) == "a red star"
    assert 1 in tokenizer.encode("a RED star")  # upper case never appears in the captions: unknown
    with pytest.raises(ValueError, match="outside the vocabulary of size 128"):
        tokenizer.decode([5, 128])


def test_encode_batch_pads_and_truncates(tokenizer):
    texts = ["a red circle", "a small purple triangle to the left of an orange star"]
    short, long = (tokenizer.encode(t) for t in texts)
    T = len(short) + 4
    batch = tokenizer.encode_batch(texts, context_length=T)
    assert batch.shape == (2, T) and batch.dtype == torch.long
    assert batch[0].tolist() == [2] + short + [3, 0, 0]
    assert len(long) > T - 2
    assert batch[1].tolist() == [2] + long[: T - 2] + [3]  # truncated, BOS and EOS kept
    assert tokenizer.encode_batch([], 8).shape == (0, 8)
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.encode_batch(texts, 2)
    with pytest.raises(ValueError, match="list of strings"):
        tokenizer.encode_batch("a red circle", 8)


def test_save_load_and_bytes_give_identical_ids(tokenizer, captions, tmp_path):
    path = tmp_path / "tok.model"
    tokenizer.save(path)
    for other in (Tokenizer.load(path), Tokenizer.from_bytes(tokenizer.to_bytes())):
        assert other.vocab_size == tokenizer.vocab_size
        assert torch.equal(other.encode_batch(captions, 24), tokenizer.encode_batch(captions, 24))
    assert len(tokenizer.to_bytes()) < 10_000  # identity normalisation keeps the model small
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model: not a SentencePiece model"):
        Tokenizer.load(tmp_path / "bad.model")


def test_training_is_deterministic(captions):
    assert Tokenizer.train(captions, 64).to_bytes() == Tokenizer.train(captions, 64).to_bytes()


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_too_large_a_vocab_is_capped_to_what_the_captions_allow(captions, model_type):
    capped = Tokenizer.train(captions, vocab_size=5000, model_type=model_type)
    assert 30 < capped.vocab_size < 5000
    again = Tokenizer.train(captions, vocab_size=capped.vocab_size, model_type=model_type)
    assert again.to_bytes() == capped.to_bytes()  # the cap is exactly the largest size that trains
    for caption in captions[:50]:
        assert capped.decode(capped.encode(caption)) == caption


def test_too_small_a_vocab_says_the_smallest_that_works(captions):
    with pytest.raises(ValueError, match=r"vocab_size 10 is too small .* needs vocab_size >= \d+") as err:
        Tokenizer.train(captions, vocab_size=10)
    smallest = int(re.search(r">= (\d+)", str(err.value)).group(1))
    assert smallest == len(set("".join(captions)) - {" "}) + 1 + 4  # characters, the word-start mark, specials
    assert Tokenizer.train(captions, vocab_size=smallest).vocab_size == smallest
    with pytest.raises(ValueError, match=f">= {smallest}"):
        Tokenizer.train(captions, vocab_size=smallest - 1)


@pytest.mark.parametrize("bad, message", [([], "at least one caption"), (["a cat", ""], "caption 1 is empty"),
                                          (["a cat", "  "], "caption 1 is empty"),
                                          (["a cat", 3], "caption 1 must be a string, got int"),
                                          ("a cat", "list of caption strings")])
def test_bad_captions_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer.train(bad, vocab_size=32)


# --- text encoder -------------------------------------------------------------------------------------------------

def tiny(kind: str, **kwargs) -> TextConfig:
    return TextConfig(vocab_size=40, context_length=12, kind=kind, dim=16, depth=2, heads=2, mlp_dim=32, out_dim=8,
                      **kwargs)


def padded_tokens() -> torch.Tensor:
    tokens = torch.randint(4, 40, (3, 9))
    tokens[:, 0], tokens[0, 5:], tokens[1, 8:] = 2, 0, 0
    tokens[0, 4], tokens[1, 7], tokens[2, 8] = 3, 3, 3
    return tokens  # (3, 9): BOS, pieces, EOS, padding


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_output_shape(kind):
    out = TextEncoder(tiny(kind))(padded_tokens())
    assert out.shape == (3, 8) and out.dtype == torch.float32
    assert not torch.allclose(out.norm(dim=-1), torch.ones(3))  # not normalised: CLIP normalises


def test_mean_kind_is_the_mean_of_non_pad_embeddings():
    encoder = TextEncoder(tiny("mean"))
    tokens = padded_tokens()
    expected = torch.stack([encoder.token_embed(row[row != 0]).mean(0) for row in tokens]) @ encoder.projector.weight.T
    torch.testing.assert_close(encoder(tokens), expected)


def test_a_bag_of_words_cannot_tell_who_is_above_whom_and_a_transformer_can():
    # "a red square above a blue star" against "a blue square above a red star": the same pieces in another order.
    one, other = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 3]]), torch.tensor([[2, 5, 9, 7, 8, 6, 10, 3]])
    mean, transformer = TextEncoder(tiny("mean")), TextEncoder(tiny("transformer"))
    for encoder in (mean, transformer):  # at the start of training everything is near 0: give weights real size
        torch.nn.init.normal_(encoder.token_embed.weight)
        torch.nn.init.eye_(encoder.projector.weight)  # the output is the pooled vector's first 8 numbers
    torch.nn.init.normal_(transformer.pos_embed)
    torch.testing.assert_close(mean(one), mean(other))
    # float rounding would differ by ~1e-7 of the norm; word order by a percent or more
    assert (transformer(one) - transformer(other)).norm() > 0.01 * transformer(one).norm()


def test_a_bag_of_words_gives_opposite_binding_questions():
    # "a red square" - "a blue square" equals "a red star" - "a blue star" for a bag of words (before the
    # normalisation): one image cannot prefer the first of each pair.
    a, red, blue, square, star, eos, bos = 5, 6, 7, 8, 9, 3, 2
    caption = lambda colour, shape: torch.tensor([[bos, a, colour, shape, eos]])  # noqa: E731
    encoder = TextEncoder(tiny("mean"))
    torch.nn.init.normal_(encoder.token_embed.weight)
    squares = encoder(caption(red, square)) - encoder(caption(blue, square))
    stars = encoder(caption(red, star)) - encoder(caption(blue, star))
    torch.testing.assert_close(squares, stars, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_padding_does_not_change_the_output(kind):
    encoder = TextEncoder(tiny(kind, dropout=0.1)).eval()
    tokens = padded_tokens()
    more_padding = torch.cat([tokens, torch.zeros(3, 3, dtype=torch.long)], dim=1)  # (3, 12)
    torch.testing.assert_close(encoder(more_padding), encoder(tokens), atol=1e-6, rtol=1e-5)
    alone = torch.cat([encoder(tokens[i : i + 1, : int((tokens[i] != 0).sum())]) for i in range(3)])
    torch.testing.assert_close(alone, encoder(tokens), atol=1e-6, rtol=1e-5)  # batching and trimming do not matter


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_all_padding_row_is_finite(kind):
    tokens = padded_tokens()
    tokens[1] = 0
    assert torch.isfinite(TextEncoder(tiny(kind))(tokens)).all()


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_gradients_reach_every_parameter(kind):
    encoder = TextEncoder(tiny(kind))
    encoder(padded_tokens()).pow(2).sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_bad_token_ids_are_refused(kind):
    encoder = TextEncoder(tiny(kind))
    with pytest.raises(ValueError, match=r"\[0, 40\) for vocab_size 40"):
        encoder(torch.tensor([[2, 40, 3]]))
    with pytest.raises(ValueError, match="vocab_size 40"):
        encoder(torch.tensor([[2, -1, 3]]))
    with pytest.raises(ValueError, match="long tensor"):
        encoder(torch.tensor([[2.0, 5.0, 3.0]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        encoder(torch.tensor([2, 5, 3]))


def test_transformer_refuses_captions_longer_than_its_positions():
    with pytest.raises(ValueError, match="exceed context_length 12"):
        TextEncoder(tiny("transformer"))(torch.full((1, 13), 5))


def test_encoder_reads_tokenizer_output(tokenizer):
    cfg = TextConfig(vocab_size=tokenizer.vocab_size, context_length=16, dim=16, out_dim=8)
    tokens = tokenizer.encode_batch(["a red circle", "a blue square below a green star"], cfg.context_length)
    assert TextEncoder(cfg)(tokens).shape == (2, 8)
