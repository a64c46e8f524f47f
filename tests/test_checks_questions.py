import pytest

from tinyvit.checks import QUESTIONS, Question


# ---- quiz questions -------------------------------------------------------------------------------------

def test_every_question_grades_its_answer_correct_and_the_others_not():
    assert len(QUESTIONS) == 5
    for question in QUESTIONS:
        for option in range(len(question.options)):
            correct, text = question.grade(option)
            assert correct == (option == question.answer)
            assert text.startswith("Correct." if correct else "Not quite.")
        assert question.grade(None) == (False, "pick an option first")


def test_question_rejects_bad_definitions_and_choices():
    with pytest.raises(ValueError, match="2 options, 1 feedback"):
        Question("q", ("a", "b"), 0, ("only one",))
    with pytest.raises(ValueError, match="option index 0..3"):
        QUESTIONS[0].grade(7)
