"""Writes routing_sample.csv beside this file: team-written routing data for the training tests
(no copy of a public data set). Run it again after changing a template; the output is seeded.

    .venv/bin/python services/classifier/tests/data/make_routing_sample.py

Eight task families, 50 prompts each, as four-option questions in the dev set's format. The labels
follow a rule plus seeded noise: the strong model is right on most prompts; the weak model is right
on most one-step recall questions and less often the more steps a problem needs (word problems,
equations, syllogisms), so the strong model's gain grows with the work a prompt asks for.
`mental_arithmetic` carries the one-token recording artifact of the dev set (the strong model marked
wrong on most questions the weak model got right), so its strong labels are unusable."""

from __future__ import annotations

import csv
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / "routing_sample.csv"
PER_SUBJECT = 50

COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Spain", "Madrid"),
    ("Ghana", "Accra"),
    ("Poland", "Warsaw"),
    ("Thailand", "Bangkok"),
    ("Cuba", "Havana"),
    ("Greece", "Athens"),
    ("Iran", "Tehran"),
]
SYNONYMS = [
    ("happy", "glad"),
    ("big", "large"),
    ("quick", "fast"),
    ("begin", "start"),
    ("tired", "weary"),
    ("angry", "furious"),
    ("small", "tiny"),
    ("smart", "clever"),
    ("calm", "serene"),
    ("brave", "bold"),
]
FACTS = [
    ("Which gas do plants take in for photosynthesis?", "Carbon dioxide", ["Oxygen", "Nitrogen", "Helium"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Gd", "Go"]),
    ("Which organ pumps blood through the body?", "The heart", ["The liver", "The lungs", "The kidney"]),
    ("What is the boiling point of water at sea level in Celsius?", "100", ["90", "80", "120"]),
    ("Which part of the cell holds its DNA?", "The nucleus", ["The membrane", "The ribosome", "The wall"]),
    ("What force keeps the planets in orbit?", "Gravity", ["Magnetism", "Friction", "Tension"]),
    ("Which animal is a mammal?", "The whale", ["The shark", "The trout", "The frog"]),
]
UNITS = [("metres", "centimetres", 100), ("kilograms", "grams", 1000), ("hours", "minutes", 60), ("feet", "inches", 12)]
NAMES = ["Tom", "Ana", "Ravi", "Mei", "Lena", "Omar", "Sara", "Jon", "Ines", "Kofi"]
ITEMS = [("pencils", 3), ("apples", 2), ("notebooks", 5), ("tickets", 7), ("cups", 4)]


def options(right, wrong, rng) -> tuple[str, int]:
    choices = [str(right), *map(str, wrong[:3])]
    order = rng.permutation(4)
    lines = "\n".join(f"{'ABCD'[i]}. {choices[j]}" for i, j in enumerate(order))
    return lines, 1


def mc(stem: str, right, wrong, rng) -> str:
    lines, _ = options(right, wrong, rng)
    return f"{stem}\n{lines}\nAnswer:"


def capitals(rng):
    country, capital = COUNTRIES[rng.integers(len(COUNTRIES))]
    wrong = [c for _, c in COUNTRIES if c != capital]
    return mc(f"What is the capital of {country}?", capital, list(rng.choice(wrong, 3, replace=False)), rng), 1


def synonyms(rng):
    word, right = SYNONYMS[rng.integers(len(SYNONYMS))]
    wrong = [s for _, s in SYNONYMS if s != right]
    return mc(f"Which word means the same as '{word}'?", right, list(rng.choice(wrong, 3, replace=False)), rng), 1


def science(rng):
    stem, right, wrong = FACTS[rng.integers(len(FACTS))]
    return mc(stem, right, wrong, rng), 1


def conversion(rng):
    big, small, factor = UNITS[rng.integers(len(UNITS))]
    n = int(rng.integers(2, 10))
    return mc(
        f"How many {small} are in {n} {big}?", n * factor, [n * factor + factor, n + factor, n * factor // 2], rng
    ), 1


def word_problem(rng):
    name = NAMES[rng.integers(len(NAMES))]
    item, price = ITEMS[rng.integers(len(ITEMS))]
    steps = int(rng.integers(1, 6))
    count = int(rng.integers(3, 9))
    money = price * count + int(rng.integers(5, 30))
    text = [f"{name} has ${money} and buys {count} {item} at ${price} each."]
    left = money - price * count
    extra = [
        ("Then {n} spends $4 on lunch.", lambda x: x - 4),
        ("After that {n} earns $10 for helping a neighbour.", lambda x: x + 10),
        ("Next {n} gives half of the remaining money to a friend.", lambda x: x // 2),
        ("Finally {n} pays $3 for the bus ride home.", lambda x: x - 3),
    ]
    for sentence, change in extra[: steps - 1]:
        text.append(sentence.format(n=name))
        left = change(left)
    text.append(f"How many dollars does {name} have left?")
    return mc(" ".join(text), left, [left + 2, left - 1, left + 5], rng), steps


def equations(rng):
    steps = int(rng.integers(1, 5))
    x = int(rng.integers(2, 12))
    a, b = int(rng.integers(2, 7)), int(rng.integers(1, 20))
    if steps == 1:
        stem = f"Solve for x: x + {b} = {x + b}."
    elif steps == 2:
        stem = f"Solve for x: {a}x + {b} = {a * x + b}."
    elif steps == 3:
        c = int(rng.integers(1, a))
        stem = f"Solve for x: {a}x + {b} = {c}x + {b + (a - c) * x}."
    else:
        y = int(rng.integers(1, 9))
        stem = f"If x + y = {x + y} and {a}x - y = {a * x - y}, what is the value of x?"
    return mc(stem, x, [x + 1, x - 1, x + 3], rng), steps


def syllogisms(rng):
    steps = int(rng.integers(1, 5))
    terms = rng.permutation(["blims", "drofs", "zaps", "kells", "murns", "tivs"])[: steps + 1]
    premises = [f"All {terms[i]} are {terms[i + 1]}." for i in range(steps)]
    if rng.random() < 0.5:
        question, right = f"Does it follow that all {terms[0]} are {terms[-1]}?", "Yes, necessarily"
    else:
        question, right = f"Does it follow that all {terms[-1]} are {terms[0]}?", "No, it does not follow"
    wrong = [w for w in ("Yes, necessarily", "No, it does not follow") if w != right] + ["Only some", "It is false"]
    return mc(" ".join(premises) + " " + question, right, wrong, rng), steps


def arithmetic(rng):
    a, b = int(rng.integers(12, 99)), int(rng.integers(3, 9))
    return mc(f"What is {a} * {b}?", a * b, [a * b + b, a * b - 1, a * (b + 1)], rng), 1


# subject: (template, weak accuracy at one step, loss per further step, strong accuracy, artifact)
SUBJECTS = {
    "world_capitals": (capitals, 0.9, 0.0, 0.96, False),
    "synonyms": (synonyms, 0.88, 0.0, 0.95, False),
    "science_facts": (science, 0.86, 0.0, 0.95, False),
    "unit_conversion": (conversion, 0.82, 0.0, 0.95, False),
    "shopping_word_problems": (word_problem, 0.85, 0.17, 0.92, False),
    "linear_equations": (equations, 0.85, 0.2, 0.93, False),
    "syllogisms": (syllogisms, 0.85, 0.18, 0.9, False),
    "mental_arithmetic": (arithmetic, 0.7, 0.0, 0.95, True),
}


def rows(seed: int = 0):
    rng = np.random.default_rng(seed)
    for subject, (template, weak_one, loss, strong_p, artifact) in SUBJECTS.items():
        for _ in range(PER_SUBJECT):
            prompt, steps = template(rng)
            strong = rng.random() < strong_p
            weak_p = max(0.05, weak_one - loss * (steps - 1))
            # The weak model is rarely right where the strong one is wrong.
            weak = rng.random() < (min(1.0, weak_p / strong_p) if strong else 0.05)
            if artifact and weak and rng.random() < 0.7:
                strong = False  # began with working instead of a letter: recorded as wrong
            yield ["llmesh-sample", subject, prompt, int(weak), int(strong)]


def main() -> None:
    with open(OUT, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["source", "subject", "prompt", "weak_correct", "strong_correct"])
        writer.writerows(rows())


if __name__ == "__main__":
    main()
