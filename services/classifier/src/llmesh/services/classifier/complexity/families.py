"""Task families: groups of related subjects, the unit an honest evaluation leaves out.

Leaving out one subject at a time is optimistic for traffic of a kind the model has never seen:
a held-out subject almost always has a sibling in training (college_physics when
high_school_physics is held out; professional_medicine when clinical_knowledge is), and the
model borrows what the sibling taught it. Leaving out a whole family removes the siblings too,
which is what a new task family (math word problems, a new domain's questions) looks like.

The grouping follows MMLU's categories (STEM, humanities, social sciences, other), with STEM split
into math-and-computing and science, and law, medicine and business apart from the rest, since
each has its own style of question (case vignettes, clinical vignettes, business cases). Subjects
of the in-repo sample (tests/data/routing_sample.csv) are grouped the same way. A subject not
listed is a family of its own.
"""

from __future__ import annotations

import numpy as np

FAMILIES: dict[str, tuple[str, ...]] = {
    "stem_math": (
        "abstract_algebra",
        "college_mathematics",
        "elementary_mathematics",
        "high_school_mathematics",
        "high_school_statistics",
        "college_computer_science",
        "high_school_computer_science",
        "computer_security",
        "machine_learning",
        # in-repo sample
        "linear_equations",
        "mental_arithmetic",
        "shopping_word_problems",
        "unit_conversion",
    ),
    "stem_science": (
        "astronomy",
        "college_biology",
        "college_chemistry",
        "college_physics",
        "conceptual_physics",
        "electrical_engineering",
        "high_school_biology",
        "high_school_chemistry",
        "high_school_physics",
        "science_facts",
    ),
    "humanities": (
        "formal_logic",
        "logical_fallacies",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
        "prehistory",
        "high_school_european_history",
        "high_school_us_history",
        "high_school_world_history",
        "world_religions",
        "syllogisms",
        "synonyms",
    ),
    "social_sciences": (
        "econometrics",
        "high_school_geography",
        "high_school_government_and_politics",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "high_school_psychology",
        "human_sexuality",
        "professional_psychology",
        "public_relations",
        "security_studies",
        "sociology",
        "us_foreign_policy",
        "world_capitals",
    ),
    "law": ("international_law", "jurisprudence", "professional_law"),
    "medicine": (
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "human_aging",
        "medical_genetics",
        "nutrition",
        "professional_medicine",
        "virology",
    ),
    "business": (
        "business_ethics",
        "management",
        "marketing",
        "professional_accounting",
        "global_facts",
        "miscellaneous",
    ),
}

_FAMILY_OF = {subject: family for family, subjects in FAMILIES.items() for subject in subjects}


def family_of(subject: str) -> str:
    """The family a subject belongs to; an unlisted subject is a family of its own."""
    return _FAMILY_OF.get(subject, f"other:{subject}")


def families(subjects: np.ndarray) -> np.ndarray:
    """The family of each row."""
    return np.array([family_of(s) for s in np.asarray(subjects).tolist()])
