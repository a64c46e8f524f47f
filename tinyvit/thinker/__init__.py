"""The Thinker: a tiny decoder-only language model that answers questions about shapes images from a frozen CLIP
encoder's image tokens. `model` holds the network and generation, `questions` the question data and its batches,
`training` training, scoring, saving and loading; every public name is importable from `tinyvit.thinker`.
"""
from ..runs import load_clip_encoder
from .model import WHITEN_EPS, Thinker, generate, image_tokens, whitening
from .questions import (
    QUESTION_TYPES, QABatches, encode_qa, first_answer_positions, make_qa, normalise_question, prompt_ids,
    scene_questions, train_tokenizer, unseen_answers,
)
from .training import (
    RECIPE, THINKER_FILE, answer_loss, answer_questions, encode_scenes, encoder_fingerprint, evaluate_qa,
    greedy_matches, load_thinker, save_thinker, thinker_batch_loss, train_thinker,
)

__all__ = [
    "Thinker", "generate", "image_tokens", "whitening", "WHITEN_EPS",
    "QUESTION_TYPES", "QABatches", "encode_qa", "first_answer_positions", "make_qa", "normalise_question",
    "prompt_ids", "scene_questions", "train_tokenizer", "unseen_answers",
    "RECIPE", "THINKER_FILE", "answer_loss", "answer_questions", "encode_scenes", "encoder_fingerprint",
    "evaluate_qa", "greedy_matches", "load_thinker", "save_thinker", "thinker_batch_loss", "train_thinker",
    "load_clip_encoder",
]
