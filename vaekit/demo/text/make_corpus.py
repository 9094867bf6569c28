"""Regenerate the demo corpus: ``python make_corpus.py`` writes train.txt, valid.txt and test.txt here.

A small original grammar (written for vaekit, MIT-licensed): short sentences about people, animals,
places and weather, with enough structure (topic, tense, length) for a latent code to capture.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = {
    "person": [
        "the farmer",
        "my sister",
        "the old sailor",
        "a young doctor",
        "the teacher",
        "our neighbour",
        "the baker",
        "a tired student",
        "the captain",
        "my grandfather",
    ],
    "animal": [
        "the cat",
        "a small dog",
        "the black horse",
        "an old owl",
        "the goat",
        "a grey rabbit",
        "the fox",
        "two ducks",
        "the brown bear",
        "a little bird",
    ],
}
ACTIONS = {
    "person": [
        ("reads", "read", "a long book"),
        ("bakes", "baked", "fresh bread"),
        ("paints", "painted", "the fence"),
        ("repairs", "repaired", "the broken boat"),
        ("writes", "wrote", "a letter"),
        ("cooks", "cooked", "a warm soup"),
        ("sells", "sold", "red apples"),
        ("carries", "carried", "a heavy box"),
    ],
    "animal": [
        ("chases", "chased", "a yellow ball"),
        ("eats", "ate", "the green grass"),
        ("watches", "watched", "the river"),
        ("finds", "found", "a hidden nest"),
        ("follows", "followed", "the path"),
        ("digs", "dug", "a deep hole"),
    ],
}
PLACES = [
    "in the garden",
    "near the harbour",
    "by the river",
    "in the kitchen",
    "on the hill",
    "at the market",
    "in the forest",
    "behind the barn",
    "under the bridge",
    "in the village",
]
TIMES = [
    "every morning",
    "at night",
    "after lunch",
    "on sunday",
    "before the storm",
    "in the spring",
    "all day",
    "at dawn",
]
WEATHER = [
    "the sky is clear",
    "it is raining",
    "the wind is cold",
    "snow is falling",
    "the sun is warm",
    "fog covers the valley",
]
FEELINGS = ["happy", "quiet", "hungry", "sleepy", "proud", "nervous", "calm"]


def sentence(rng: random.Random) -> str:
    kind = rng.choice(list(SUBJECTS))
    subject = rng.choice(SUBJECTS[kind])
    present, past, obj = rng.choice(ACTIONS[kind])
    verb = rng.choice([present, past])
    template = rng.randrange(6)
    if template == 0:
        words = [subject, verb, obj, rng.choice(PLACES)]
    elif template == 1:
        words = [subject, verb, obj, rng.choice(PLACES), rng.choice(TIMES)]
    elif template == 2:
        words = [rng.choice(TIMES), subject, verb, obj]
    elif template == 3:
        words = [rng.choice(WEATHER), "and", subject, "is" if verb == present else "was", rng.choice(FEELINGS)]
    elif template == 4:
        words = [subject, verb, obj, "because", rng.choice(WEATHER)]
    else:
        other = rng.choice(SUBJECTS[kind])
        words = [subject, "and", other, "are" if verb == present else "were", rng.choice(FEELINGS), rng.choice(PLACES)]
    return " ".join(words) + " ."


def main() -> None:
    rng = random.Random(2026)
    here = Path(__file__).parent
    for name, count in (("train", 3000), ("valid", 300), ("test", 300)):
        lines = [sentence(rng) for _ in range(count)]
        (here / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
