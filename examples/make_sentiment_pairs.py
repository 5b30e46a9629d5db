"""Writes the sentiment examples from the hand-written phrase lists below:

- sentiment_pairs.jsonl: 180 contrastive pairs on the tone of an opinion (positive vs negative).
  The steered behaviour is easy to see: a neutral prompt ("My opinion of the new phone is that
  it") turns glowing or sour.
- complaint_pairs.jsonl: 180 pairs for a gate (build-gate): the positive text is a complaint
  (it should make the gate fire), the negative text praise of the same thing.
- sentiment_dev.jsonl, sentiment_test.jsonl: 64 and 56 multiple-choice reviews ("Review: ...
  Sentiment:" with the choices " negative" and " positive"), half of each label, in sentences the
  pairs do not use: a small task for tune and eval to run on in a minute.
"""

import json
import random
from pathlib import Path

THINGS = [
    "the movie", "the restaurant", "the new phone", "the hotel", "the concert", "the book",
    "the laptop", "the museum", "the coffee shop", "the video game", "the train ride", "the city",
    "the album", "the football match", "the cooking class",
]
# (positive, negative) completions of "... it was"
WORDS = [
    (" wonderful", " terrible"), (" excellent", " awful"), (" delightful", " dreadful"),
    (" brilliant", " boring"), (" fantastic", " disappointing"), (" lovely", " horrible"),
    (" superb", " miserable"), (" amazing", " painful"), (" charming", " annoying"),
    (" great", " bad"), (" a joy", " a disaster"), (" pleasant", " unpleasant"),
]
# reviews for the multiple-choice files: (sentence with {x}, positive fillers, negative fillers)
REVIEWS = [
    ("We spent the evening at {x} and", ["left smiling", "want to go back soon", "told all our friends"],
     ["left early", "asked for a refund", "will not return"]),
    ("My sister recommended {x}, and honestly it", ["exceeded every expectation", "was worth every penny", "made my week"],
     ["was a waste of money", "fell apart quickly", "ruined my week"]),
    ("After a month with {x}, I", ["still love it", "recommend it to everyone", "cannot imagine going without it"],
     ["regret buying it", "would not recommend it", "am returning it"]),
    ("The staff at {x} were", ["kind and quick", "helpful from start to finish", "warm and attentive"],
     ["rude and slow", "nowhere to be found", "careless and cold"]),
]


def reviews():
    rows = []
    for t, thing in enumerate(THINGS):
        for r, (sentence, good, bad) in enumerate(REVIEWS):
            k = (t + r) % 3
            for label, filler in ((1, good[k]), (0, bad[k])):
                text = sentence.format(x=thing) + " " + filler + "."
                rows.append({"prompt": f"Review: {text[0].upper() + text[1:]}\nSentiment:", "choices": [" negative", " positive"],
                             "label": label})
    return rows


def main() -> None:
    here = Path(__file__).parent
    with (here / "sentiment_pairs.jsonl").open("w", encoding="utf-8") as f:
        for thing in THINGS:
            for pos, neg in WORDS:
                prompt = f"Here is my honest opinion of {thing}: it was"
                f.write(json.dumps({"prompt": prompt, "positive": pos, "negative": neg}) + "\n")
    with (here / "complaint_pairs.jsonl").open("w", encoding="utf-8") as f:
        for thing in THINGS:
            for pos, neg in WORDS:
                # the opinion comes first and the text ends where a completion would go on, as
                # the prompts the gate will judge do
                said = f"Someone asked me about {thing}. I told them it was"
                f.write(json.dumps({"positive": f"{said}{neg}, and", "negative": f"{said}{pos}, and"}) + "\n")
    rows = reviews()  # 120: even-numbered things to dev, odd to test
    dev = [r for i, r in enumerate(rows) if (i // (2 * len(REVIEWS))) % 2 == 0]
    test = [r for i, r in enumerate(rows) if (i // (2 * len(REVIEWS))) % 2 == 1]
    for name, part in (("sentiment_dev.jsonl", dev), ("sentiment_test.jsonl", test)):
        random.Random(name).shuffle(part)  # no order by label: tune's check splits dev by position
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    print(f"wrote {len(THINGS) * len(WORDS)} sentiment and complaint pairs, {len(dev)} dev and {len(test)} test reviews to {here}")


if __name__ == "__main__":
    main()
