"""Graders for the exercises the learner writes in the notebooks, one module per notebook topic (the quizzes
live in tinyvit.quiz). Each grader prints one hint that names the mistake and returns a `Verdict`."""
from .attention import check_attention_head, check_multi_head
from .contrastive import check_info_nce, check_recall_at_k, symmetric_info_nce
from .core import NOT_ATTEMPTED, Verdict
from .embedding import check_cls_and_positions, check_patch_embedding
from .patches import check_patchify, check_unpatchify
from .rollout import check_cls_attention_map, check_rollout
from .thinker import check_answer_loss, check_causal_mask, check_greedy_decode

__all__ = ["check_causal_mask", "check_greedy_decode", "check_multi_head", "check_cls_attention_map", "check_rollout",
           "NOT_ATTEMPTED", "Verdict", "check_patchify", "check_unpatchify",
           "check_patch_embedding", "check_cls_and_positions", "check_attention_head", "check_info_nce",
           "check_recall_at_k", "symmetric_info_nce", "check_answer_loss"]
