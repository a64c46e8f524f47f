import math

import pytest
import torch
import torch.nn.functional as F

from tinyvit.checks import check_answer_loss, check_causal_mask, check_greedy_decode
from tinyvit.text import EOS_ID
from tinyvit.thinker import generate


def grade(checker, fn, capsys):
    result = checker(fn)
    return result, capsys.readouterr().out


# ---- the answer loss with left-out pieces (notebook 6) -------------------------------------------------

def answer_loss_reference(logits, targets, left_out):
    return F.cross_entropy(logits.masked_fill(left_out, float("-inf")), targets)


def answer_loss_by_hand(logits, targets, left_out):  # the same, written out: -log(e^target / sum of kept e^logit)
    kept = logits.exp() * ~left_out
    return -(kept[torch.arange(len(targets)), targets] / kept.sum(1)).log().mean()


@pytest.mark.parametrize("fn", [answer_loss_reference, answer_loss_by_hand,
                                lambda l, t, m: answer_loss_reference(l, t, m).reshape(1)])
def test_check_answer_loss_accepts_correct_forms(fn, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda l, t, m: F.cross_entropy(l, t), "plain cross-entropy"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, 0.0), t), "a logit of 0 still counts"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(~m, float("-inf")), t), "not finite"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(~m, -1e9), t), "wrong way round"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, float("-inf")), t, reduction="sum"), "average over the rows"),
    (lambda l, t, m: F.cross_entropy(l.masked_fill(m, float("-inf")), t, reduction="none"), "one number"),
    (lambda l, t, m: -F.cross_entropy(l.masked_fill(m, float("-inf")), t), "differs"),  # the sign
    (lambda l, t, m: None, "not attempted"),
])
def test_check_answer_loss_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert not ok and words in out
    assert "masked_fill" not in out and "cross_entropy(" not in out  # a hint, never the answer


@pytest.mark.parametrize("fn, words", [
    (lambda l, t, m: answer_loss_reference(l, t, m).detach(), "cut off from autograd"),
    (lambda l, t, m: torch.tensor(answer_loss_reference(l, t, m).item()), "cut off from autograd"),
    (lambda l, t, m: answer_loss_reference(l.detach(), t, m) + 0 * l.sum(), "gradient is not"),
])
def test_check_answer_loss_wants_a_loss_that_backpropagates(fn, words, capsys):
    ok, out = grade(check_answer_loss, fn, capsys)
    assert not ok and words in out


# ---- the causal mask (notebook 6) -----------------------------------------------------------------------

def causal_bool(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def causal_additive(T):  # a different correct form: 0 where a position may look, -inf where it may not
    return torch.zeros(T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))


@pytest.mark.parametrize("fn", [causal_bool, causal_additive, lambda T: torch.arange(T)[:, None] >= torch.arange(T),
                                lambda T: causal_additive(T).clamp(min=-1e9)])
def test_check_causal_mask_accepts_correct_forms(fn, capsys):
    ok, out = grade(check_causal_mask, fn, capsys)
    assert ok and out.startswith("correct")


@pytest.mark.parametrize("fn, words", [
    (lambda T: causal_bool(T).T, "transposed"),
    (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "diagonal is blocked"),
    (lambda T: torch.ones(T, T, dtype=torch.bool), "nothing is masked"),
    (lambda T: ~causal_bool(T), "wrong way round"),
    (lambda T: causal_additive(T).T, "transposed"),
    (lambda T: causal_bool(T).float(), "1 and 0 block nothing"),
    (lambda T: causal_bool(T).long(), "dtype torch.int64"),
    (lambda T: causal_additive(T).masked_fill(causal_additive(T) < 0, -1.0), "only 0 (may attend) and -inf"),
    (lambda T: causal_bool(T + 1), "expected shape"),
    (lambda T: None, "not attempted"),
    (lambda T: (_ for _ in ()).throw(NotImplementedError), "not attempted"),
])
def test_check_causal_mask_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_causal_mask, fn, capsys)
    assert not ok and words in out
    assert "tril" not in out and "triu" not in out  # a hint, never the answer


# ---- greedy decoding (notebook 6) -----------------------------------------------------------------------

def greedy(model, image_tokens, prompt, max_new_tokens, position=-1, stop=True, feed=True, extra=0):
    ids, out = prompt, []
    with torch.no_grad():
        for _ in range(max_new_tokens + extra):
            piece = int(model(image_tokens, ids)[0, position].argmax())
            if stop and piece == EOS_ID:
                break
            out.append(piece)
            if feed:
                ids = torch.cat([ids, torch.tensor([[piece]])], dim=1)
    return out


def greedy_tensor(model, image_tokens, prompt, max_new_tokens):  # a different correct form: a (1, n) tensor
    ids = prompt
    for _ in range(max_new_tokens):
        piece = model(image_tokens, ids)[:, -1:].argmax(-1)  # (1, 1)
        if piece.item() == EOS_ID:
            break
        ids = torch.cat([ids, piece], dim=1)
    return ids[:, prompt.shape[1]:]


@pytest.mark.parametrize("fn", [greedy, greedy_tensor])
def test_check_greedy_decode_accepts_correct_forms(fn, capsys):
    ok, out = grade(check_greedy_decode, fn, capsys)
    assert ok and out.startswith("correct")


def with_eos(model, image_tokens, prompt, max_new_tokens):
    out = []
    for piece in greedy(model, image_tokens, prompt, max_new_tokens, stop=False):
        out.append(piece)
        if piece == EOS_ID:
            break
    return out


def sampled(model, image_tokens, prompt, max_new_tokens):
    generator, ids, out = torch.Generator().manual_seed(0), prompt, []
    for _ in range(max_new_tokens):
        probs = (model(image_tokens, ids)[0, -1] / 30).softmax(-1)
        piece = int(torch.multinomial(probs, 1, generator=generator))
        if piece == EOS_ID:
            break
        out.append(piece)
        ids = torch.cat([ids, torch.tensor([[piece]])], dim=1)
    return out


@pytest.mark.parametrize("fn, words", [
    (with_eos, "ends with EOS"),
    (lambda m, i, p, n: greedy(m, i, p, n, stop=False), "stop at EOS"),
    (lambda m, i, p, n: greedy(m, i, p, n, feed=False), "feed each new piece back"),
    (lambda m, i, p, n: greedy(m, i, p, n, position=0), "at the last position"),
    (lambda m, i, p, n: p[0].tolist() + greedy(m, i, p, n), "starts with the prompt"),
    (lambda m, i, p, n: greedy(m, i, p, n, extra=1), "stop at that many"),
    (lambda m, i, p, n: greedy(m, i, p, n, extra=-1), "off-by-one"),
    (sampled, "differ from greedy decoding"),
    (lambda m, i, p, n: torch.zeros(2, 3), "shape (2, 3)"),
    (lambda m, i, p, n: None, "not attempted"),
])
def test_check_greedy_decode_names_the_mistake(fn, words, capsys):
    ok, out = grade(check_greedy_decode, fn, capsys)
    assert not ok and words in out
    assert "argmax(" not in out and "torch.cat" not in out


def test_check_greedy_decode_rejects_the_package_own_generate(capsys):
    ok, out = grade(check_greedy_decode, lambda m, i, p, n: generate(m, i, p, max_new_tokens=n)[0], capsys)
    assert not ok and "package's own tinyvit.thinker.generate" in out


def test_check_greedy_decode_leaves_the_learner_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    grade(check_greedy_decode, greedy, capsys)
    assert torch.equal(torch.rand(3), expected)
