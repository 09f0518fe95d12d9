"""IFEval's checkers through `ontask.checks.library`: one response that passes and one that
fails for every checker, the cases where no verdict is possible (passed None), and that the
library imports offline without printing or downloading anything."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ontask.checks import CheckResult, check
from ontask.checks.library import CHECKERS

IFEVAL_IDS = {
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:nth_paragraph_first_word",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "detectable_format:constrained_response",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "keywords:letter_frequency",
    "punctuation:no_comma",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "change_case:capital_word_frequency",
    "language:response_language",
    "startend:end_checker",
    "startend:quotation",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "combination:two_responses",
    "combination:repeat_prompt",
}

ESSAY_320_WORDS = """\
Community gardens have quietly become one of the most useful institutions in modern cities. \
They turn vacant lots, rooftops and the forgotten corners of parks into places where \
neighbours grow food, trade advice and get to know one another. A single plot rarely feeds a \
family for a whole year, but it changes how people think about what they eat and where it \
comes from.

The first benefit is practical. Fresh vegetables are expensive in many urban neighbourhoods, \
and some districts have no grocery store within walking distance at all. A shared garden \
offers tomatoes, beans, lettuce and herbs for the cost of seeds and a few hours of work each \
week. Gardeners often grow more than they need and pass the surplus to food banks, schools \
or the family next door.

The second benefit is social. Gardens bring together people who would otherwise never meet: \
retired engineers, teenagers on summer break, recent immigrants who remember farming in \
another country. Working side by side on the same soil builds trust in a way that meetings \
and newsletters seldom do. Disputes about water schedules or stray weeds are real, but they \
are also a gentle lesson in sharing a common resource.

The third benefit is environmental. Planted ground absorbs rainwater that would otherwise \
rush into overloaded drains, and leaves and flowers cool the surrounding streets on hot \
afternoons. Bees and butterflies find food where there used to be only asphalt. Compost \
bins turn kitchen scraps into rich soil instead of sending them to a landfill.

None of this happens automatically. Gardens need secure land agreements, a reliable water \
supply, tools that are stored safely and a handful of volunteers who keep records and \
settle arguments. Cities that want these benefits should treat gardens as infrastructure \
rather than as temporary favours, and should write them into long term plans for housing \
and parks. When they do, the return on a very small investment can be remarkable for \
everyone involved."""

SHORT_50_WORDS = (
    "Community gardens turn empty lots into places where neighbours grow food together. They "
    "lower the cost of fresh vegetables, bring different generations into contact and help the "
    "city absorb rainwater. They still need land agreements, water and volunteers, so cities "
    "should plan for them like any other shared public service."
)

GERMAN = (
    "Die Besprechung wurde auf Donnerstag verschoben. Bitte bringen Sie Ihre Notizen und den "
    "Quartalsbericht mit, damit wir die Zahlen gemeinsam durchgehen können."
)
ENGLISH = "The meeting has been moved to Thursday at noon. Please bring your notes and the quarterly report."

# (id, kwargs, passing response, failing response); each pair written for the constraint.
CASES = [
    ("length_constraints:number_words", {"relation": "at least", "num_words": 300}, ESSAY_320_WORDS, SHORT_50_WORDS),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 60}, SHORT_50_WORDS, ESSAY_320_WORDS),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        # Punkt's English model knows "Dr." and "a.m." are not sentence ends: two sentences.
        "Dr. Patel reviewed the results at 9 a.m. on Monday. She approved the plan.",
        "The results came in on Monday. Dr. Patel reviewed them. She approved the plan. We start next week.",
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "at least", "num_sentences": 4},
        "The results came in on Monday. Dr. Patel reviewed them. She approved the plan. We start next week.",
        "The results came in on Monday and were approved.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 3},
        "Spring is for planting peas and lettuce.\n\n***\n\nSummer brings tomatoes and beans.\n\n***\n\n"
        "Autumn is the time to plant garlic.",
        # Blank lines are not paragraph breaks for this checker: only the *** divider is.
        "Spring is for planting peas and lettuce.\n\nSummer brings tomatoes and beans.\n\n"
        "Autumn is the time to plant garlic.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "however"},
        "Remote work saves commuting time.\n\nHowever, it can make collaboration harder.\n\n"
        "A hybrid schedule often balances both.",
        "Remote work saves commuting time.\n\nMoreover, it can make collaboration harder.\n\n"
        "A hybrid schedule often balances both.",
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "Pack these for the hike:\n* Water\n* A rain jacket\n* Trail snacks",
        "Pack these for the hike:\n* Water\n* A rain jacket\n* Trail snacks\n* A map",
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "Before you start, *read the safety notes*. Then *check the battery level* twice.",
        "Before you start, *read the safety notes*. Then check the battery level twice.",
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nGather the ingredients.\nSECTION 2\nMix and bake for twenty minutes.",
        "SECTION 1\nGather the ingredients, mix them and bake for twenty minutes.",
    ),
    (
        "detectable_format:json_format",
        {},
        '```json\n{"city": "Lisbon", "population": 545000, "coastal": true}\n```',
        'Here is the data: {"city": "Lisbon", "population": 545000}',
    ),
    (
        "detectable_format:title",
        {},
        "<<Ode to the Morning Tide>>\nThe sea comes in with silver light.",
        "Ode to the Morning Tide\nThe sea comes in with silver light.",
    ),
    (
        "detectable_format:constrained_response",
        {},
        "My answer is yes.",
        "Yes, definitely.",
    ),
    (
        "keywords:existence",
        {"keywords": ["photosynthesis", "chlorophyll"]},
        "Photosynthesis happens in the leaves, where chlorophyll captures sunlight.",
        "Plants turn sunlight into sugar inside their leaves, using chlorophyll.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["very", "really"]},
        "The concert was excellent and the crowd was enthusiastic.",
        "The concert was really excellent and the crowd was enthusiastic.",
    ),
    (
        "keywords:frequency",
        {"keyword": "ocean", "frequency": 3, "relation": "at least"},
        "The ocean covers most of the planet. Ocean currents move heat, and the ocean absorbs carbon.",
        "The ocean covers most of the planet, and its currents move heat around the globe.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "The lazy zebra zigzagged across the plaza.",
        "The quick brown fox jumps over the dog.",
    ),
    (
        "punctuation:no_comma",
        {},
        "We left at dawn and reached the summit before noon.",
        "We left at dawn, and we reached the summit before noon.",
    ),
    (
        "change_case:english_capital",
        {},
        "WE SHOULD LEAVE EARLY TOMORROW MORNING BECAUSE THE TRAFFIC ON THE HIGHWAY IS ALWAYS TERRIBLE AFTER EIGHT.",
        "We should leave early tomorrow morning because the traffic on the highway is always terrible after eight.",
    ),
    (
        "change_case:english_lowercase",
        {},
        "we should leave early tomorrow morning because the traffic on the highway is always terrible after eight.",
        "We should leave early tomorrow morning because the traffic on the highway is always terrible after eight.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "This is VERY IMPORTANT: submit the form by FRIDAY.",
        "This is very important: submit the form by FRIDAY.",
    ),
    ("language:response_language", {"language": "de"}, GERMAN, ENGLISH),
    (
        "startend:end_checker",
        {"end_phrase": "Is there anything else I can help with?"},
        "Your order ships tomorrow. Is there anything else I can help with?",
        "Is there anything else I can help with? Your order ships tomorrow.",
    ),
    (
        "startend:quotation",
        {},
        '"Patience is the companion of wisdom."',
        "Patience is the companion of wisdom.",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], your package will arrive at [address] on Monday.",
        "Dear [name], your package will arrive on Monday.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Thanks for the lovely dinner.\n\nP.S. I left my scarf on your chair.",
        "Thanks for the lovely dinner. I left my scarf on your chair.",
    ),
    (
        "combination:two_responses",
        {},
        "Paris is the capital of France.\n******\nThe capital of France is Paris, on the Seine.",
        "Paris is the capital of France.\n******\nParis is the capital of France.",
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku about rain."},
        "Write a haiku about rain.\nSoft rain on the roof / counting the hours till dawn / puddles hold the sky",
        "Here is a haiku about rain.\nSoft rain on the roof / counting the hours till dawn / puddles hold the sky",
    ),
]


def test_word_counts_of_the_fixtures():
    assert len(ESSAY_320_WORDS.split()) >= 300
    assert 45 <= len(SHORT_50_WORDS.split()) <= 55


def test_every_ifeval_checker_has_a_pass_and_a_fail_case():
    assert {case[0] for case in CASES} == IFEVAL_IDS


@pytest.mark.parametrize(("iid", "kwargs", "good", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_passes_and_fails(iid, kwargs, good, bad):
    ok = check(iid, kwargs, good)
    assert ok.passed is True, ok
    assert ok.reason is None
    no = check(iid, kwargs, bad)
    assert no.passed is False, no
    assert no.reason and no.reason.startswith("not followed: ")


def test_checkers_table():
    assert set(CHECKERS) == IFEVAL_IDS
    assert CHECKERS["length_constraints:number_words"].kwargs == ("num_words", "relation")
    assert CHECKERS["keywords:letter_frequency"].kwargs == ("letter", "let_frequency", "let_relation")
    assert CHECKERS["punctuation:no_comma"].kwargs == ()
    assert CHECKERS["combination:repeat_prompt"].kwargs == ("prompt_to_repeat",)
    for iid, info in CHECKERS.items():
        assert info.instruction_id == iid
        assert info.description and "\n" not in info.description
        assert info.checker.startswith("lm_eval.tasks.ifeval.instructions.")


def test_result_is_frozen():
    r = check("punctuation:no_comma", {}, "No commas here.")
    assert isinstance(r, CheckResult) and r.passed is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.passed = False  # type: ignore[misc]


def test_ifeval_rows_pad_kwargs_with_none():
    kwargs = {"num_words": 300, "relation": "at least", "num_sentences": None, "keywords": None, "language": None}
    r = check("length_constraints:number_words", kwargs, ESSAY_320_WORDS)
    assert r.passed is True
    assert r.kwargs == {"num_words": 300, "relation": "at least"}


def test_repeat_prompt_takes_the_prompt_when_the_kwarg_is_missing():
    prompt = "Write a haiku about rain."
    assert check("combination:repeat_prompt", {}, prompt + "\nSoft rain on the roof.", prompt=prompt).passed is True
    assert check("combination:repeat_prompt", {"prompt_to_repeat": ""}, "Soft rain.", prompt=prompt).passed is False
    r = check("combination:repeat_prompt", {}, prompt + "\nSoft rain on the roof.")
    assert r.passed is None and "prompt_to_repeat" in r.reason


def test_empty_response_is_not_followed_as_in_ifeval():
    r = check("keywords:forbidden_words", {"forbidden_words": ["very"]}, "   \n")
    assert r.passed is False and "empty" in r.reason


def test_unknown_id_gives_no_verdict():
    r = check("length_constraints:number_syllables", {"num_syllables": 10}, "Hello there.")
    assert r.passed is None
    assert "unknown" in r.reason and "number_syllables" in r.reason
    assert check(None, {}, "x").passed is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("iid", "kwargs", "needle"),
    [
        ("length_constraints:number_words", {"num_words": 300, "relation": "more than"}, "more than"),
        ("length_constraints:number_words", {"num_words": 300}, "missing"),
        ("length_constraints:number_words", {"num_words": "300", "relation": "at least"}, "bad kwargs"),
        ("length_constraints:number_words", {"num_words": -5, "relation": "at least"}, "bad value"),
        ("length_constraints:number_words", {"num_words": True, "relation": "at least"}, "bad value"),
        ("length_constraints:number_words", {"num_words": 300, "relation": "at least", "language": "en"}, "unexpected"),
        ("punctuation:no_comma", {"num_words": 3}, "unexpected"),
        ("keywords:existence", {"keywords": "ocean"}, "does not take"),  # a string, not a list
        ("keywords:existence", {"keywords": []}, "does not take"),  # lm-eval would pick random words
        ("keywords:letter_frequency", {"letter": "é", "let_frequency": 2, "let_relation": "at least"}, "does not take"),
        ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}, "does not take"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 5, "first_word": "however"},
            "does not take",
        ),
        ("language:response_language", {"language": "xx"}, "bad kwargs"),
    ],
)
def test_bad_kwargs_give_no_verdict(iid, kwargs, needle):
    r = check(iid, kwargs, ESSAY_320_WORDS)
    assert r.passed is None, r
    assert needle in r.reason


def test_kwargs_that_are_not_a_mapping_give_no_verdict():
    r = check("length_constraints:number_words", [("num_words", 300)], "Hello.")  # type: ignore[arg-type]
    assert r.passed is None and "mapping" in r.reason
    assert check("punctuation:no_comma", None, "No commas.").passed is True


def test_library_errors_give_no_verdict():
    # lm-eval uses keywords as regular expressions; an invalid one raises inside the checker.
    r = check("keywords:existence", {"keywords": ["smile :("]}, "I smile :( sometimes.")
    assert r.passed is None and "error" in r.reason.lower()
    r = check("punctuation:no_comma", {}, 42)  # type: ignore[arg-type]
    assert r.passed is None


def test_undetectable_language_is_no_verdict_not_a_pass():
    # lm-eval counts a langdetect failure as "followed"; here it is no verdict.
    r = check("language:response_language", {"language": "de"}, "12345 67890")
    assert r.passed is None and "detect" in r.reason


def test_check_does_not_touch_the_global_random_state():
    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    check("keywords:existence", {"keywords": []}, "anything")  # lm-eval draws random keywords here
    check("keywords:letter_frequency", {"letter": "é", "let_frequency": 2, "let_relation": "at least"}, "x")
    assert random.random() == expected


def test_quirk_all_caps_english_can_be_detected_as_another_language():
    """langdetect is case-sensitive: some ALL-CAPS English is read as Vietnamese, so IFEval's
    english_capital fails it. Pinned so that a library change shows up here."""
    text = "THE MEETING HAS BEEN MOVED TO THURSDAY AT NOON. PLEASE BRING YOUR NOTES AND THE QUARTERLY REPORT."
    assert check("change_case:english_capital", {}, text).passed is False
    assert check("change_case:english_lowercase", {}, text.lower()).passed is True


_IMPORT_PROBE = textwrap.dedent(
    """
    import nltk
    def _no_network(*args, **kwargs):
        raise AssertionError("nltk.download was called")
    nltk.download = _no_network
    from ontask.checks import check
    r = check("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
              "Dr. Smith arrived. He sat down.")
    c = check("change_case:capital_word_frequency", {"capital_frequency": 1, "capital_relation": "at least"}, "OK then.")
    print(repr((r.passed, r.reason, c.passed)))
    """
)


def test_import_is_offline_quiet_and_never_downloads(tmp_path):
    """A fresh interpreter with no NLTK data anywhere (NLTK_DATA and HOME empty): importing
    and running the two Punkt checkers prints nothing else, never calls nltk.download, and
    removes its temporary punkt_tab at exit."""
    env = dict(os.environ, NLTK_DATA=str(tmp_path / "empty"), HOME=str(tmp_path), TMPDIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == "(True, None, True)\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ontask-nltk-data-")]


_TASKS_PROBE = textwrap.dedent(
    """
    import sys
    from ontask.checks import check, library
    before = check("punctuation:no_comma", {}, "No commas here.").passed
    skipped = "lm_eval.tasks" not in sys.modules and "lm_eval.tasks.manager" not in sys.modules
    import lm_eval.tasks
    from lm_eval.tasks.ifeval import instructions_registry
    print(repr((before, skipped, hasattr(lm_eval.tasks, "TaskManager"),
                instructions_registry.INSTRUCTION_DICT is library._load().registry)))
    """
)


def test_the_checkers_load_without_lm_evals_task_manager():
    """A fresh interpreter: the checkers work without `lm_eval.tasks`' own __init__ having
    run (its task manager is a tenth of a second of imports the checkers never use), and a
    later `import lm_eval.tasks` still gets the real package, with the very registry the
    checks use."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _TASKS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "(True, True, True, True)\n"


def test_without_punkt_tab_only_the_punkt_checkers_lose_their_verdict(monkeypatch):
    """What happens when punkt_tab could not be provided (e.g. no writable temp dir)."""
    from lm_eval.tasks.ifeval import instructions_util

    from ontask.checks import library

    def missing():
        raise LookupError("Resource punkt_tab not found.\n  Please use the NLTK Downloader")

    lib = library._load()
    monkeypatch.setattr(library, "_loaded", dataclasses.replace(lib, punkt_problem="NLTK punkt_tab could not be provided"))
    monkeypatch.setattr(instructions_util, "_get_sentence_tokenizer", missing)
    r = check("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "One. Two.")
    assert r.passed is None and "punkt_tab" in r.reason and "\n" not in r.reason
    assert check("punctuation:no_comma", {}, "No commas here.").passed is True


def test_the_import_guard_blocks_downloads_and_their_output(capsys):
    import nltk

    from ontask.checks import library

    real = nltk.download
    with library._no_nltk_download():
        assert nltk.download("punkt_tab") is False
        print("Downloaded punkt_tab on rank 0")
    assert nltk.download is real
    assert capsys.readouterr().out == ""
