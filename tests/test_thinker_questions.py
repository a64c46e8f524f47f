"""tinyvit.thinker.questions: questions from the labels, their tokenizer and packed batches."""
import pytest
import torch

from tinyvit.data import COLOURS, POSITIONS, SHAPES, ShapesConfig, ShapesDataset, heldout_pairs, make_item
from tinyvit.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from tinyvit.thinker import QABatches, encode_qa, make_qa, prompt_ids, scene_questions, train_tokenizer, unseen_answers


pytestmark = pytest.mark.usefixtures("one_thread")


def test_unseen_answers_are_the_answers_of_a_type_a_question_never_had():
    dataset = ShapesDataset(300, ShapesConfig(image_size=16), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 40)
    ruled_out = unseen_answers(records, ids, mask)
    by_question = {r["question"]: out for r, out in zip(records, ruled_out)}
    first_piece = {c: tok.encode(c)[0] for c in COLOURS}
    heldout = dict(heldout_pairs())  # shape -> its held-out colour: never in the train split
    for shape, colour in heldout.items():
        assert first_piece[colour] in by_question[f"what colour is the {shape}?"]
        assert first_piece[colour] not in by_question[f"what colour is the {next(s for s in SHAPES if s != shape)}?"]
    assert by_question["what shape is this?"] == []  # every shape answers it
    for record, out in zip(records, ruled_out):  # never the piece of an answer the question had
        assert out == by_question[record["question"]] and tok.encode(record["answer"])[0] not in out
    # In packed batches the pieces sit at each pair's first answer position and nowhere else.
    batches = QABatches(torch.randn(300, 1, 32).half(), records, ids, mask, batch_size=8, ruled_out=ruled_out)
    _, batch_ids, batch_mask, segments, batch_out = batches(0)
    assert batch_out.shape[:2] == batch_ids.shape and batch_out.shape[2] == max(map(len, ruled_out))
    starts = batch_mask & ~torch.cat([torch.zeros(8, 1, dtype=torch.bool), batch_mask[:, :-1]], 1)
    assert ((batch_out >= 0).any(-1) & ~starts).sum() == 0 and (batch_out >= 0).any()
    assert len(QABatches(torch.randn(300, 1, 32).half(), records, ids, mask, batch_size=8)(0)) == 4


@pytest.mark.parametrize("unnamed", [0.0, 0.5])
def test_questions_are_answered_from_the_labels(unnamed):
    cfg = ShapesConfig(image_size=32, unnamed_fraction=unnamed)
    rng = __import__("random").Random(0)
    kinds = set()
    for index in range(60):
        item = make_item(index, cfg, "train")
        records = scene_questions(item, rng)
        objects = item["objects"]
        named = [o["colour"] >= 0 for o in objects]
        assert len(records) == sum(3 if n else 2 if len(objects) == 1 else 1 for n in named) + 1
        for r in records:
            if r["type"] == "describe":
                assert r["answer"].count(" and ") == len(objects) - 1
                for o in objects:
                    colour = f"{COLOURS[o['colour']]} " if o["colour"] >= 0 else ""
                    assert f"{colour}{SHAPES[o['shape']]}" in r["answer"]
                continue
            o = objects[r["object"]]
            colour = COLOURS[o["colour"]] if o["colour"] >= 0 else None
            kinds.add((r["type"], colour is not None))
            expected = {"shape": SHAPES[o["shape"]], "colour": colour, "position": POSITIONS[o["position"]]}[r["type"]]
            assert r["answer"] == expected and r["pair"] == (SHAPES[o["shape"]], colour)
            # The question names the other attribute, which no other object in the scene shares.
            if r["type"] == "colour":
                assert SHAPES[o["shape"]] in r["question"]
            if r["type"] == "shape" and len(objects) == 2:
                assert colour in r["question"]
    assert ("colour", False) not in kinds and (("position", False) in kinds) == (unnamed > 0)


def test_heldout_pairs_never_appear_in_training_questions():
    records = make_qa(ShapesDataset(1500, ShapesConfig(image_size=32, unnamed_fraction=0.3), "train"))
    assert not {r["pair"] for r in records} & heldout_pairs()
    texts = [r["question"] + " | " + r["answer"] for r in records]
    for shape, colour in heldout_pairs():
        assert not any(f"{colour} {shape}" in t for t in texts)
        assert not any(r["pair"] is not None and r["pair"][0] == shape and r["answer"] == colour for r in records)
    heldout = make_qa(ShapesDataset(50, ShapesConfig(image_size=32), "heldout"))
    assert all(r["pair"] in heldout_pairs() for r in heldout if r["object"] == 0)


def test_qa_tokenizer_covers_the_questions_and_the_caption_tokenizer_does_not():
    dataset = ShapesDataset(300, ShapesConfig(image_size=32), "train")
    qa_tok = train_tokenizer(dataset)
    for r in make_qa(dataset):
        assert UNK_ID not in qa_tok.encode(r["question"]) + qa_tok.encode(r["answer"])
    assert len(qa_tok.encode("what shape is this?")) == 5
    caption_tok = Tokenizer.train(dataset.captions, 256)
    assert UNK_ID in caption_tok.encode("what shape is this?")  # "?" never occurs in a caption


def test_encode_qa_lays_out_question_then_answer():
    dataset = ShapesDataset(20, ShapesConfig(image_size=32), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 24)
    for m in (0, 5, len(records) - 1):
        prompt = prompt_ids(tok, records[m]["question"])
        row = ids[m].tolist()
        assert row[: len(prompt)] == prompt and prompt[0] == BOS_ID and prompt[-1] == EOS_ID
        answer = [i for i, keep in zip(row, mask[m].tolist()) if keep]
        assert answer[-1] == EOS_ID and tok.decode(answer) == records[m]["answer"]
    with pytest.raises(ValueError, match="more than context_length 6"):
        encode_qa(tok, records, 6)


def test_batches_pack_each_images_questions_into_one_row():
    dataset = ShapesDataset(10, ShapesConfig(image_size=32), "train")
    tok, records = train_tokenizer(dataset), make_qa(dataset)
    ids, mask = encode_qa(tok, records, 24)
    tokens = torch.randn(10, 1, 32).half()
    batches = QABatches(tokens, records, ids, mask, batch_size=4, seed=3)
    a, b = batches(7), QABatches(tokens, records, ids, mask, batch_size=4, seed=3)(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    image, batch_ids, batch_mask, segments = a
    assert image.shape == (4, 1, 32) and image.dtype == torch.float32
    assert batch_ids.shape == batch_mask.shape == segments.shape and (segments[:, -1] != -1).any()
    for row in range(4):
        image_index = int(torch.nonzero((tokens.float() == image[row]).all(-1).all(-1))[0])
        mine = [m for m, r in enumerate(records) if r["image"] == image_index]
        assert int(segments[row].max()) == len(mine)
        for j, m in enumerate(mine):  # pair j + 1 of the row is record m, answer mask included
            n = int((ids[m] != PAD_ID).sum())
            assert torch.equal(batch_ids[row][segments[row] == j + 1], ids[m, :n])
            assert torch.equal(batch_mask[row][segments[row] == j + 1], mask[m, :n])
