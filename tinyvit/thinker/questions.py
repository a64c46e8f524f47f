"""The Thinker's question data: questions about a shapes scene answered from its labels, their tokenizer, and
training batches that pack each image's question-answer pairs into one row.

Text layout: [BOS, question..., EOS, answer..., EOS, PAD...]; the loss reads only the answer tokens (its EOS
included). Shapes: M question-answer records, T text tokens, B images per batch, K image tokens, E = 256.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Sequence

import torch

from ..data import COLOURS, POSITIONS, SHAPES, WHERE, Batches, ShapesDataset, object_name, with_article
from ..text import BOS_ID, EOS_ID, PAD_ID, Tokenizer

QUESTION_TYPES = ("shape", "colour", "position", "describe")


def scene_questions(scene: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Question-answer records of one scene (a make_item / ShapesDataset.scenes() dict): per object a shape, a
    colour and a position question, then one "describe the image." (objects in reading order). An object in a
    colour without a name gets no colour question, nor a shape question beside another object (nothing names it).
    Record: type, question, answer, object (index, -1 for describe), pair (shape, colour or None), n_objects."""
    objects, records = scene["objects"], []
    two = len(objects) == 2
    for k, obj in enumerate(objects):
        shape, colour = SHAPES[obj["shape"]], COLOURS[obj["colour"]] if obj["colour"] >= 0 else None
        named = object_name(obj) if rng.random() < 0.5 else shape  # both forms are unique in a scene
        questions = [("shape", "what shape is this?", shape)] if not two else \
            [("shape", f"what shape is the {colour} one?", shape)] if colour else []
        questions += [("colour", f"what colour is the {shape}?", colour)] if colour else []
        questions.append(("position", f"where is the {named}?", POSITIONS[obj["position"]]))
        records += [{"type": kind, "question": question, "answer": answer, "object": k, "pair": (shape, colour),
                     "n_objects": len(objects)} for kind, question, answer in questions]
    in_reading_order = sorted(objects, key=lambda o: (o["position"], o["centre"][1], o["centre"][0]))
    description = " and ".join(f"{with_article(object_name(o))} {WHERE[POSITIONS[o['position']]]}"
                               for o in in_reading_order)
    records.append({"type": "describe", "question": "describe the image.", "answer": description, "object": -1,
                    "pair": None, "n_objects": len(objects)})
    return records


def make_qa(dataset: ShapesDataset, seed: int = 0) -> list[dict[str, Any]]:
    """Every question of every scene of `dataset`, each record with "image": its index in the data set."""
    rng = random.Random(seed)
    return [{**record, "image": i} for i, scene in enumerate(dataset.scenes())
            for record in scene_questions(scene, rng)]


def train_tokenizer(dataset: ShapesDataset, vocab_size: int = 160, seed: int = 0) -> Tokenizer:
    """SentencePiece on the questions, answers and captions of `dataset`. The CLIP run's tokenizer saw captions
    only: "what", "where", "describe", "colour" and "?" are not in them, so it cuts the questions into letters
    (and "?" into unk). Trained on the QA texts, every word of a question or answer is one or two pieces."""
    texts = [r[key] for r in make_qa(dataset, seed) for key in ("question", "answer")] + dataset.captions
    return Tokenizer.train(sorted(set(texts)), vocab_size)


def normalise_question(question: str) -> str:
    """Lower case, single spaces: the questions are written that way. Empty questions are refused."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty; ask e.g. 'what shape is this?' (got {question!r})")
    return " ".join(question.lower().split())


def prompt_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """[BOS, question pieces..., EOS]: the part of the text the model reads before answering."""
    return [BOS_ID, *tokenizer.encode(normalise_question(question)), EOS_ID]


def encode_qa(tokenizer: Tokenizer, records: Sequence[dict[str, Any]], context_length: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS, question, EOS, answer, EOS, PAD...] per record -> ids (M, T) long and answer mask (M, T) bool
    (True on the answer's pieces and its closing EOS). Too long a record raises ValueError."""
    ids = torch.full((len(records), context_length), PAD_ID, dtype=torch.long)  # (M, T)
    mask = torch.zeros(len(records), context_length, dtype=torch.bool)  # (M, T)
    for m, record in enumerate(records):
        prompt, answer = prompt_ids(tokenizer, record["question"]), tokenizer.encode(record["answer"]) + [EOS_ID]
        if len(prompt) + len(answer) > context_length:
            raise ValueError(f"{record['question']!r} + {record['answer']!r} needs {len(prompt) + len(answer)} "
                             f"tokens, more than context_length {context_length}")
        ids[m, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[m, len(prompt) : len(prompt) + len(answer)] = True
    return ids, mask


class QABatches:
    """Training batches of `batch_size` images, each image's question-answer pairs packed into one row after its
    tokens: the image is read once for all its questions, not once per question.
    A pure function of (seed, step) as `data.Batches` makes them, so resuming is exact. batches(step) ->
    (image tokens float (B, K, E), ids (B, T'), answer mask (B, T'), segments (B, T'): pair 1, 2, ..., -1 = pad),
    and with `ruled_out` (per record, pieces left out of its first answer position's softmax: `unseen_answers`)
    a fifth tensor (B, T', R) long, -1 where nothing is left out."""

    def __init__(self, tokens: torch.Tensor, records: Sequence[dict[str, Any]], ids: torch.Tensor,
                 answer_mask: torch.Tensor, batch_size: int, seed: int = 0,
                 ruled_out: Sequence[Sequence[int]] | None = None):
        rows_of: dict[int, list[int]] = defaultdict(list)
        for m, record in enumerate(records):
            rows_of[record["image"]].append(m)
        self.tokens, self.images = tokens, sorted(rows_of)
        lengths = (ids != PAD_ID).sum(1).tolist()
        self.with_ruled_out = ruled_out is not None
        self.width = max(map(len, ruled_out), default=0) if self.with_ruled_out else 0  # R
        first = first_answer_positions(answer_mask).tolist()  # (M,)

        def left_out(m: int) -> torch.Tensor:  # (t, R) int32: the record's pieces at its first answer position
            out = torch.full((lengths[m], self.width), -1, dtype=torch.int32)
            out[first[m], : len(ruled_out[m])] = torch.tensor(ruled_out[m], dtype=torch.int32)
            return out

        self.rows = []  # per image: its pairs end to end, (ids, answer mask, segments[, ruled out]), each (t, ...)
        for image in self.images:
            parts = [(ids[m, : lengths[m]], answer_mask[m, : lengths[m]], torch.full((lengths[m],), j + 1))
                     + ((left_out(m),) if self.with_ruled_out else ()) for j, m in enumerate(rows_of[image])]
            self.rows.append(tuple(torch.cat(column) for column in zip(*parts)))
        self.order = Batches(self.images, batch_size, seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        picks = self.order.indices(step).tolist()  # (B,)
        width = max(len(self.rows[p][0]) for p in picks)
        ids = torch.full((len(picks), width), PAD_ID, dtype=torch.long)  # (B, T')
        mask = torch.zeros(len(picks), width, dtype=torch.bool)  # (B, T')
        segments = torch.full((len(picks), width), -1, dtype=torch.long)  # (B, T')
        columns = [ids, mask, segments]
        if self.with_ruled_out:
            columns.append(torch.full((len(picks), width, self.width), -1, dtype=torch.long))  # (B, T', R)
        for b, p in enumerate(picks):
            n = len(self.rows[p][0])
            for column, values in zip(columns, self.rows[p]):
                column[b, :n] = values
        return (self.tokens[[self.images[p] for p in picks]].float(), *columns)


def first_answer_positions(answer_mask: torch.Tensor) -> torch.Tensor:
    """Where each record's answer starts: (M, T) bool from `encode_qa` -> (M,) long. The loss leaves unseen
    answers out at this position only."""
    return answer_mask.int().argmax(1)


def unseen_answers(records: Sequence[dict[str, Any]], ids: torch.Tensor, answer_mask: torch.Tensor
                   ) -> list[list[int]]:
    """Per record, the first answer pieces that answer other questions of its type in these records but never its
    own question: for "what colour is the circle?" in a training set without blue circles, the piece of "blue".

    A plain language model learns from such a set that a circle is never blue: every "what colour is the circle?"
    lowers "blue", since the softmax raises the right answer and lowers all others. Asked about a blue circle, it
    then answers with a colour circles had in training, whatever the image token says (the shortcut of the CLIP
    loss, benchmarks/README.md, now in the language model). Leaving these pieces out of the loss at that position
    (`answer_loss`'s ruled_out) keeps absence of evidence from becoming evidence of absence. It reads only the
    training records, never the held-out list. ids, answer_mask (M, T) from `encode_qa` -> M sorted lists."""
    pieces = ids.gather(1, first_answer_positions(answer_mask)[:, None])[:, 0].tolist()  # (M,)
    of_type: dict[str, set[int]] = defaultdict(set)
    of_question: dict[str, set[int]] = defaultdict(set)
    for record, piece in zip(records, pieces):
        of_type[record["type"]].add(piece)
        of_question[record["question"]].add(piece)
    return [sorted(of_type[r["type"]] - of_question[r["question"]]) for r in records]
