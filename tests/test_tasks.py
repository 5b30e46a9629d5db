"""Task templates: the reference code's exact prompt strings for known rows; file conversion errors."""

import json

import pytest

from sadi_cpp.errors import BadInputError
from sadi_cpp.data.mcdata import read_mc
from sadi_cpp.data.pairs import read_pairs
from sadi_cpp.data.tasks import convert, convert_file

COPA_ROW = {"premise": "The item was packaged in bubble wrap.", "question": "cause",
            "choices": ["It was fragile.", "It was small."], "label": 0}


def test_copa_is_the_papers_prompt():
    got = convert("copa", COPA_ROW)
    assert got["prompt"] == ("Question:\nThe item was packaged in bubble wrap. Based on the previous passage, choose the most "
                             "reasonable cause.\nA:It was fragile.\nB:It was small.\n\nAnswer:\n")
    assert got["choices"] == [" A", " B"] and got["label"] == 0


@pytest.mark.parametrize("task,row,prompt,choices,label", [
    ("copa-cloze", COPA_ROW, "The item was packaged in bubble wrap because", [" it was fragile.", " it was small."], 0),
    ("storycloze", {"sentences": ["A a.", "B b.", "C c.", "D d."], "choices": ["E1.", "E2."], "label": 1},
     "A a. B b. C c. D d.\nQuestion: What is a possible continuation for the story given the following options?\nA: E1. B: E2.\nAnswer:",
     [" A", " B"], 1),
    ("sst2", {"text": " one long string of cliches . ", "label": 0},
     "Consider the sentiment expression in this sentence and respond briefly with 'positive' or 'negative'.\n\none long string of cliches .\n\nAnswer:",
     [" Negative", " Positive"], 0),
    ("boolq", {"passage": "Ethanol is a fuel.", "question": "is ethanol a fuel", "label": 1},
     "Is the answer to the question encapsulated in the passage? Please confirm with 'yes' or 'no'.\n\nPassage: Ethanol is a fuel.\n\nQuestion: is ethanol a fuel\n\nAnswer:",
     [" No", " Yes"], 1),
    ("winogrande", {"sentence": "Sarah was better than Maria so _ won.", "option1": "Sarah", "option2": "Maria", "label": 0},
     "Please fill in the blanks. Write A or B as the answer.\n\nSentence: Sarah was better than Maria so _ won.\nA. Sarah\nB. Maria\nAnswer:",
     [" A", " B"], 0),
    ("mmlu", {"question": "2+2?", "choices": ["1", "2", "3", "4"], "answer": "D"},
     "Question: 2+2?\nWhich of the following answers is correct?\nA. 1\nB. 2\nC. 3\nD. 4\nState the letter corresponding to the correct answer.\nAnswer:",
     [" A", " B", " C", " D"], 3),
    ("nli", {"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": "contradiction"},
     "Answer whether the hypothesis is more likely to be true, false, or unclusive based on the given premise.\nPremise: A man sleeps.\nHypothesis: A man is awake.\nAnswer:",
     [" True", " unclusive", " False"], 2),
])
def test_templates_match_the_reference_strings(task, row, prompt, choices, label):
    got = convert(task, row)
    assert got == {"prompt": prompt, "choices": choices, "label": label}


def test_convert_file_slices_and_feeds_build_mask_and_eval(tmp_path):
    raw = tmp_path / "copa.jsonl"
    raw.write_text("\n".join(json.dumps(dict(COPA_ROW, label=i % 2)) for i in range(5)) + "\n")
    rows = convert_file("copa", raw, start=1, limit=3)
    assert [r["label"] for r in rows] == [1, 0, 1]
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = read_mc(mc)
    assert len(items) == 3 and items[0].choices == (" A", " B")
    pairs = read_pairs(mc)  # one pair per wrong choice: prompt+correct vs prompt+wrong
    assert len(pairs) == 3
    assert pairs[0].positive == rows[0]["prompt"] + " B" and pairs[0].negative == rows[0]["prompt"] + " A"


def test_bad_task_files(tmp_path):
    raw = tmp_path / "r.jsonl"
    raw.write_text(json.dumps(COPA_ROW) + "\n" + json.dumps({"premise": "x"}) + "\n")
    with pytest.raises(BadInputError, match=r"r.jsonl:2: missing field 'choices' for task copa"):
        convert_file("copa", raw)
    raw.write_text(json.dumps(dict(COPA_ROW, label=2)) + "\n")
    with pytest.raises(BadInputError, match=r"r.jsonl:1: field 'label' must be 0..1"):
        convert_file("copa", raw)
    with pytest.raises(BadInputError, match="unknown task 'squad'"):
        convert_file("squad", raw)
    with pytest.raises(BadInputError, match="no rows"):
        convert_file("copa", raw, start=5)
    # one row at a time, too: a clear error, not a KeyError or TypeError
    with pytest.raises(BadInputError, match="missing field 'premise'"):
        convert("copa", {"choices": ["a", "b"], "label": 0, "question": "cause"})
    with pytest.raises(BadInputError, match="must be a JSON object"):
        convert("sst2", ["a gem", 1])


def test_bad_multiple_choice_lines(tmp_path):
    p = tmp_path / "mc.jsonl"
    for line, msg in [
        ({"prompt": "p", "choices": ["a"], "label": 0}, "at least two"),
        ({"prompt": "p", "choices": ["a", "b"], "label": 2}, "index into 'choices'"),
        ({"prompt": "p", "choices": ["a", "a"], "label": 0}, "repeats"),
        ({"prompt": "p", "choices": ["a", "b"]}, "missing field 'label'"),
    ]:
        p.write_text(json.dumps(line) + "\n")
        with pytest.raises(BadInputError, match=msg):
            read_mc(p)
        with pytest.raises(BadInputError, match="mc.jsonl:1"):
            read_pairs(p)
