"""The task-family grouping that the honest (leave-one-family-out) evaluation holds out."""

from __future__ import annotations

import numpy as np
from llmesh.services.classifier.complexity.families import FAMILIES, families, family_of

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence "
    "logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes "
    "moral_scenarios nutrition philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology world_religions"
).split()


def test_every_mmlu_subject_has_exactly_one_family():
    assert len(MMLU_SUBJECTS) == 57
    listed = [s for subjects in FAMILIES.values() for s in subjects]
    assert len(listed) == len(set(listed))
    assert all(not family_of(s).startswith("other:") for s in MMLU_SUBJECTS)


def test_siblings_share_a_family_and_an_unknown_subject_is_its_own():
    assert family_of("high_school_physics") == family_of("college_physics") == "stem_science"
    assert family_of("clinical_knowledge") == family_of("professional_medicine") == "medicine"
    assert family_of("elementary_mathematics") == family_of("shopping_word_problems") == "stem_math"
    assert family_of("kitchen_chemistry") == "other:kitchen_chemistry"
    assert families(np.array(["law_x", "professional_law"])).tolist() == ["other:law_x", "law"]
