"""The chapter's five questions as multiple-choice quizzes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: one correct option, and feedback for every option."""

    prompt: str
    options: tuple[str, ...]
    answer: int
    feedback: tuple[str, ...]

    def __post_init__(self):
        if len(self.options) != len(self.feedback) or not 0 <= self.answer < len(self.options):
            raise ValueError(f"question {self.prompt!r}: {len(self.options)} options, {len(self.feedback)} "
                             f"feedback lines and answer index {self.answer} do not fit together")

    def grade(self, choice: int | None) -> tuple[bool, str]:
        """(correct?, feedback) for the option index the learner chose."""
        if choice is None:
            return False, "pick an option first"
        if not 0 <= choice < len(self.options):
            raise ValueError(f"choice must be an option index 0..{len(self.options) - 1}, got {choice!r}")
        verdict = "Correct. " if choice == self.answer else "Not quite. "
        return choice == self.answer, verdict + self.feedback[choice]


QUESTIONS = (
    Question(
        prompt="1. Why does the encoder cut the image into patches instead of attending over single pixels?",
        options=(
            "Attention compares every token with every other, so its cost grows with the square of the token "
            "count: 196 patch tokens instead of 50,176 pixel tokens means 65,536 times fewer attention entries.",
            "A transformer accepts at most 196 inputs.",
            "Single pixels lose their colour when they are embedded.",
            "Patches keep all of the image's information, pixels do not.",
        ),
        answer=0,
        feedback=(
            "196^2 = 38,416 entries per head against 50,176^2 (about 2.5 billion, 10 GB in fp32).",
            "Nothing in attention fixes the sequence length; only its cost grows, quadratically.",
            "A pixel token would still carry its three colour values.",
            "Patches hold exactly the same numbers as the pixels; the gain is fewer, larger tokens.",
        ),
    ),
    Question(
        prompt="2. What is the CLS token?",
        options=(
            "The average of the 196 patch tokens.",
            "A learned 128-d vector put in front of the patch tokens; it attends to them in every block, and "
            "its final state is the one the loss sees, so training makes it a summary of the image.",
            "The class label of the image, given as input.",
            "The top-left patch, which the model reads first.",
        ),
        answer=1,
        feedback=(
            "Mean pooling is the alternative to a CLS token, not what the CLS token is.",
            "It has no pixels of its own: it only collects, through attention.",
            "No label goes in; CLIP-style training has no classes at all.",
            "Patch 0 is the top-left patch; CLS comes before it, at token index 0.",
        ),
    ),
    Question(
        prompt="3. Into how many 16 x 16 patches is a 224 x 224 image cut?",
        options=("14", "196", "197", "256"),
        answer=1,
        feedback=(
            "14 is the count along one side: 224 / 16.",
            "14 x 14 = 196.",
            "197 is the number of tokens: the 196 patches plus CLS.",
            "256 is the number of pixels in one patch (16 x 16), or the projector's width.",
        ),
    ),
    Question(
        prompt="4. Why does the encoder keep only the CLS token's output?",
        options=(
            "Because the patch tokens are empty after the last block.",
            "Because the training loss is computed on CLS alone, so CLS learns to gather what the task needs, "
            "and the Thinker's interface takes one vector per image; the patch tokens still carry information.",
            "Because attention deletes the patch tokens' information once CLS has read it.",
            "Because averaging the patch tokens is impossible.",
        ),
        answer=1,
        feedback=(
            "They hold 196 x 128 numbers of context-mixed features; other models keep them all.",
            "Keeping only CLS is a design choice; mean pooling, or passing all tokens, also work.",
            "Attention only mixes: nothing is moved out of the patch tokens.",
            "Averaging the patch tokens (mean pooling) is a common alternative to a CLS token.",
        ),
    ),
    Question(
        prompt="5. Why is the 128-d CLS vector projected to 256 dimensions at the end?",
        options=(
            "To add detail: 256 numbers describe the image better than 128.",
            "Because attention needs 256 dimensions.",
            "So that the image token has the width of the Thinker's token embeddings and can sit in the "
            "same sequence as the text tokens.",
            "Because the contrastive loss only works in 256 dimensions.",
        ),
        answer=2,
        feedback=(
            "A linear map cannot add information: its 256 outputs span at most 128 dimensions.",
            "The encoder's attention runs at width 128.",
            "The projector is an adapter between two widths, 128 and the Thinker's 256.",
            "The loss works in any shared width; 256 is chosen to match the Thinker.",
        ),
    ),
)
