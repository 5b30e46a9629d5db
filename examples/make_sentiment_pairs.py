"""Writes sentiment_pairs.jsonl: 180 contrastive pairs on the tone of an opinion (positive vs
negative), from the hand-written phrase lists below. The steered behaviour is easy to see: a
neutral prompt ("My opinion of the new phone is that it") turns glowing or sour."""

import json
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


def main() -> None:
    out = Path(__file__).with_name("sentiment_pairs.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for thing in THINGS:
            for pos, neg in WORDS:
                prompt = f"Here is my honest opinion of {thing}: it was"
                f.write(json.dumps({"prompt": prompt, "positive": pos, "negative": neg}) + "\n")
    print(f"wrote {len(THINGS) * len(WORDS)} pairs to {out}")


if __name__ == "__main__":
    main()
