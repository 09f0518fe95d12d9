"""`ontask report`: what the page holds, that it is inert to hostile text, and that it works in a browser.

The report is made from a real chain: `augment` against the fake OpenAI-compatible
server, `score` with the tiny random model, `select` by TSS++. Browser tests open it in
headless Chromium (Debian's package) through Playwright; they skip when no Chromium is
installed unless ONTASK_REQUIRE_BROWSER=1 (as CI sets), where a missing browser fails.
Set ONTASK_REPORT_SHOTS=DIR to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from ontask.cache import ResultCache
from ontask.embed import load_embedder
from ontask.records import InputError
from ontask.report import ReportOptions, build_report, find_sources
from ontask.report import augment_view as av
from ontask.report import scores_view as sv
from ontask.report.render import script_json
from ontask.scoring import ScoreConfig, run_score
from ontask.selection import SelectConfig, run_select
from ontask.tcia.config import AugmentConfig
from ontask.tcia.database import build_database
from ontask.tcia.pipeline import Roles, Seed, run_augment
from ontask.tcia.sources import read_inputs
from ontask.testing.browser import chromium_path
from ontask.testing.fake_server import FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler

DATA = Path(str(files("ontask") / "data"))
SEED = ("Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
        "give one concrete next step, and keep the reply under 120 words.")
PAYLOADS = [
    "<script>alert('s1')</script>",
    "</script><script>alert('s2')</script>",
    "<img src=x onerror=alert('s3')>",
    "<a href=\"javascript:alert('s4')\">click me</a>",
    "javascript:alert('s5')",
    "<!-- <script>alert('s6')</script> -->",
    "<svg onload=alert('s7')></svg>",
    "\u2028</SCRIPT ><b onmouseover=alert('s8')>bold</b>",
    "{{ 7*7 }} {% if true %}jinja{% endif %} ${alert('s9')}",
]

needs_browser = pytest.mark.skipif(
    chromium_path() is None and os.environ.get("ONTASK_REQUIRE_BROWSER") != "1",
    reason="no Chromium (apt-get install chromium); CI sets ONTASK_REQUIRE_BROWSER=1 so this cannot skip there")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def page_data(html_path: Path) -> dict:
    text = html_path.read_text(encoding="utf-8")
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def shot_path(tmp_path: Path, name: str) -> Path:
    keep = os.environ.get("ONTASK_REPORT_SHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# -- a real chain: augment (fake server) -> score (tiny model) -> select ------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_dir):
    from ontask.models.hf.scorer import load_hf_scorer

    root = tmp_path_factory.mktemp("chain") / "run"
    cache = ResultCache(root.parent / "cache.sqlite")
    embedder = load_embedder("embedded", cache=cache)
    db = build_database(read_jsonl(DATA / "demo_constraints.jsonl"), embedder)
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny", judge="openai:tiny",
                            responders=["openai:tiny", "openai:tiny-b"], base_url=server.base_url, concurrency=16,
                            hops=3, per_op=4, max_states=60, samples=24, inputs_per_instruction=2, seed=3,
                            min_validity=3.0, min_consistency=3.0, on_task_min_judge=3.5)
        run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, root / "augment", db=db,
                    embedder=embedder, roles=Roles(cfg, cache))
    run_score(root / "augment" / "data.jsonl", root / "scored" / "data.jsonl",
              ScoreConfig(metrics=["ppl", "ifd", "tss", "tss++"], k=2, scorer=f"hf:{tiny_dir}"),
              scorer=load_hf_scorer(tiny_dir), cache=cache, embedder=embedder)
    run_select(root / "scored" / "data.jsonl", root / "selected" / "data.jsonl", SelectConfig(by="tss++", retain=0.5))
    summary = build_report(root, root / "report.html")
    return root, summary


def test_chain_report_has_every_section_and_the_numbers_of_the_runs(chain):
    root, summary = chain
    assert summary["sections"] == ["overview", "augmentation", "lineage", "scores", "rows", "failures", "settings"] or \
        summary["sections"] == ["overview", "augmentation", "lineage", "scores", "rows", "settings"]
    assert set(summary["figures"]) >= {"funnel", "diversity", "on_task", "categories", "top_constraints",
                                       "hist_tss", "hist_tss_pp", "hist_ifd", "hist_ppl", "scatter", "budget"}
    data = page_data(root / "report.html")
    manifest = json.loads((root / "augment" / "run.json").read_text())
    # The funnel draws the manifest's counts, stage by stage.
    funnel = data["figures"]["funnel"]["data"][0]
    assert funnel["x"][0] == manifest["funnel"]["states_explored"] and funnel["x"][-1] == manifest["funnel"]["kept"]
    # Densities per hop come from the pair samples run.json now keeps, and integrate to ~1.
    div = data["figures"]["diversity"]["data"]
    assert len(div) == len([h for h, v in manifest["diversity"]["valid"].items() if h != "all" and v is not None])
    for trace in div:
        x, y = np.array(trace["x"]), np.array(trace["y"])
        assert np.trapezoid(y, x) == pytest.approx(1.0, abs=0.02)
    # Every scored row is in its metric's histogram, split by the selection.
    scored = read_jsonl(root / "scored" / "data.jsonl")
    kept = read_jsonl(root / "selected" / "data.jsonl")
    bars = {t["name"]: sum(t["y"]) for t in data["figures"]["hist_tss"]["data"]}
    assert bars == {"kept": len(kept), "dropped": len(scored) - len(kept)}
    # The cut-off line sits at the selection's cut-off, on TSS++ only.
    select = json.loads((root / "selected" / "select.json").read_text())
    lines = [s for s in data["figures"]["hist_tss_pp"]["layout"]["shapes"]]
    assert [s["x0"] for s in lines] == [pytest.approx(select["cutoff_score"])]
    assert "shapes" not in data["figures"]["hist_tss"]["layout"]
    # Lineage: every explored state plus the seed, each parent present.
    states = read_jsonl(root / "augment" / "instructions.jsonl")
    nodes = data["lineage"]["nodes"]
    assert len(nodes) == len(states) + 1
    ids = {n["id"] for n in nodes}
    assert all(n["parent"] is None or n["parent"] in ids for n in nodes)
    # The rows table: all rows (few of them), ranked by TSS++, with the strongest alternative.
    table = data["tables"]["rows"]
    keys = [c["key"] for c in table["columns"]]
    assert len(table["rows"]) == len(scored)
    tss_pp = [r[keys.index("tss_pp")] for r in table["rows"]]
    assert tss_pp == sorted(tss_pp, reverse=True)
    assert "tss_top_alt" in keys
    kept_rows = [r for r in table["rows"] if r[keys.index("selection")] == "kept"]
    assert len(kept_rows) == len(kept)


def test_script_json_cannot_end_the_script_element():
    obj = {"t": PAYLOADS, "n": 1.5}
    text = script_json(obj)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == obj


def test_histogram_counts_split_by_selection_and_tails_are_counted_not_drawn():
    v = np.array([0.0, 1.0, 2.0, 3.0, np.nan, 4.0])
    kept = np.array([True, False, True, False, False, True])
    h = sv.histogram(v, kept, bins=4)
    assert h["rows"] == 5 and h["missing"] == 1 and h["outside"] == 0
    assert sum(h["kept"]) == 3 and sum(h["dropped"]) == 2
    big = np.concatenate([np.linspace(0, 1, 998), [50.0, -50.0]])
    hb = sv.histogram(big, None)
    assert hb["outside"] == 2 and sum(hb["all"]) == 998 and hb["edges"][-1] < 50


def test_example_rows_take_top_bottom_and_the_rows_either_side_of_the_cut_off(tmp_path):
    rows = [{"instruction": f"i{i}", "tss": float(i), "tokens": 10} for i in range(400)]
    write_jsonl(tmp_path / "s.jsonl", rows)
    cols = sv.read_score_columns(tmp_path / "s.jsonl")
    sel = sv.Selection(by="tss", column="tss", descending=True, cutoff=300.0, kept=cols.values["tss"] >= 300,
                       reasons=[None] * 400, counts={}, dropped_by_reason={}, config={})
    got = sv.example_rows(cols, "tss", True, sel, per_group=10)
    groups = {g: sorted(int(cols.values["tss"][i]) for i, gg, _ in got if gg == g) for g in ("top", "bottom", "borderline")}
    assert groups["top"] == list(range(390, 400))
    assert groups["bottom"] == list(range(0, 10))
    assert groups["borderline"] == list(range(295, 305))  # 5 kept just above the cut-off, 5 dropped below
    ranks = [r for _, _, r in got]
    assert ranks == sorted(ranks) and ranks[0] == 1
    curves = sv.budget_curves(cols)
    assert curves["tss"]["tokens"][-1] == 4000 and curves["tss"]["rows"][-1] == 400


def test_lineage_cap_keeps_the_furthest_states_and_all_their_ancestors():
    manifest = {"seeds": [{"index": 0, "instruction": "seed", "state": {"constraints": []}}]}
    states = [{"seed": 0, "hop": 1, "state_hash": f"a{i}", "parent": "s", "status": "not_sampled", "edit_path": [{}]}
              for i in range(50)]
    states += [{"seed": 0, "hop": 2, "state_hash": "deep", "parent": "a7", "status": "valid", "edit_path": [{}, {}]}]
    lin = av.lineage(manifest, lambda: iter(states), max_nodes=10)
    ids = {n["id"] for n in lin["nodes"]}
    assert "0:deep" in ids and "0:a7" in ids and "seed:0" in ids
    assert len(ids) == 11 and lin["omitted"] == 41


def test_density_integrates_to_one_and_handles_degenerate_samples():
    d = av.density([0.2, 0.25, 0.3, 0.5, 0.55])
    assert np.trapezoid(d["y"], d["x"]) == pytest.approx(1.0, abs=0.02)
    same = av.density([0.4, 0.4, 0.4])
    assert same is not None and max(same["y"]) > 0
    assert av.density([0.4]) is None


def test_sources_are_found_from_any_folder_or_file_and_after_a_move(chain, tmp_path, monkeypatch):
    root, _ = chain
    whole = find_sources(root)
    assert whole.augment_dir and whole.scored_file and whole.select_manifest and whole.score_manifest
    from_selected = find_sources(root / "selected" / "data.jsonl")
    assert from_selected.scored_file.resolve() == (root / "scored" / "data.jsonl").resolve()
    assert find_sources(root / "augment").scored_file is None
    # A copy elsewhere, read from another working folder: paths recorded in the manifests are
    # tried beside the manifest too.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    monkeypatch.chdir(tmp_path)
    src = find_sources(moved / "selected")
    assert src.scored_file is not None and moved in src.scored_file.parents


def test_bad_sources_are_clear_errors(tmp_path, chain):
    with pytest.raises(InputError, match="no such file"):
        find_sources(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nothing to report on"):
        find_sources(tmp_path / "empty")
    root, _ = chain
    broken = tmp_path / "broken"
    shutil.copytree(root / "augment", broken)
    with (broken / "instructions.jsonl").open("a") as f:
        f.write("{not json\n")
    n = len((broken / "instructions.jsonl").read_text().splitlines())
    with pytest.raises(InputError, match=rf"instructions.jsonl:{n}: not JSON"):
        build_report(broken, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# -- hostile text -----------------------------------------------------------------------------
def _poison(value, i):
    """Every string becomes a payload (with the original after it, so texts stay distinct)."""
    if isinstance(value, str):
        return f"{PAYLOADS[i % len(PAYLOADS)]} {value}"
    if isinstance(value, list):
        return [_poison(v, i + j) for j, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: (_poison(v, i + j) if k not in ("state_hash", "parent", "status", "op", "seed", "hop") else v)
                for j, (k, v) in enumerate(value.items())}
    return value


@pytest.fixture(scope="module")
def hostile(chain, tmp_path_factory):
    root, _ = chain
    out = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(root, out)
    for rel in ("augment/instructions.jsonl", "augment/failed.jsonl", "scored/data.jsonl"):
        rows = read_jsonl(out / rel)
        write_jsonl(out / rel, [_poison(r, i) for i, r in enumerate(rows)] + ([] if rows else [_poison({"stage": "x", "reason": "r"}, 2)]))
    manifest = json.loads((out / "augment" / "run.json").read_text())
    manifest["seeds"][0]["instruction"] = PAYLOADS[1]
    manifest["config"]["db"] = PAYLOADS[2]
    manifest["models"]["judge"]["name"] = PAYLOADS[3]
    manifest["config"]["composer"] = PAYLOADS[8]
    (out / "augment" / "run.json").write_text(json.dumps(manifest))
    run_select(out / "scored" / "data.jsonl", out / "selected" / "data.jsonl", SelectConfig(by="tss++", retain=0.5))
    build_report(out, out / "report.html", ReportOptions(title=PAYLOADS[0]))
    return out


def test_hostile_text_never_reaches_the_page_as_markup(hostile):
    html = (hostile / "report.html").read_text(encoding="utf-8")
    head, _, rest = html.partition('<script id="report-data"')
    # Printed by the template: escaped.
    assert "&lt;script&gt;alert(&#39;s1&#39;)&lt;/script&gt;" in head
    for p in PAYLOADS[:4]:
        assert p not in head
    # In the data block: no '<' at all, so nothing in it can close the element.
    block = rest.split("</script>", 1)[0]
    assert "<" not in block
    assert "{{ 7*7 }} {% if true %}jinja{% endif %}" in head  # data is never evaluated as a template


@needs_browser
def test_hostile_text_is_shown_as_text_and_nothing_runs(hostile, tmp_path):
    from ontask.testing.browser import browser, open_report

    with browser() as b, open_report(b, hostile / "report.html") as (page, log):
        page.click("#tree-expand")
        page.locator("#rows tbody tr").first.click()
        page.fill("#rows input[type=search]", "onerror")
        page.fill("#rows input[type=search]", "")
        # Hover every point of every plot: hover labels are where Plotly renders text as markup.
        page.evaluate("""() => {
            document.querySelectorAll('[data-figure]').forEach(div => {
              (div.data || []).forEach((trace, c) => {
                const n = (trace.x || trace.y || []).length;
                for (let p = 0; p < Math.min(n, 40); p++) Plotly.Fx.hover(div, [{curveNumber: c, pointNumber: p}]);
              });
            });
        }""")
        page.mouse.move(5, 5)
        page.screenshot(path=str(shot_path(tmp_path, "hostile.png")), full_page=True)
        handlers = page.evaluate("""() => [...document.querySelectorAll('*')].flatMap(e =>
            [...e.attributes].filter(a => a.name.startsWith('on') ||
              (/(^|:)(href|src|action|formaction)$/.test(a.name) && /^\\s*javascript:/i.test(a.value)))
                             .map(a => e.tagName + ' ' + a.name + '=' + a.value))""")
        imgs = page.evaluate("() => document.querySelectorAll('img, iframe, object, embed').length")
        xss = page.evaluate("() => window.__xss")
        shown = page.inner_text("#rows")
        tree = page.inner_text("#lineage")
        title = page.title()
    assert log.dialogs == [] and xss == []
    assert log.errors == [] and log.console_errors == []
    assert handlers == [] and imgs == 0
    assert "<img src=x onerror=alert('s3')>" in shown and "<script>alert('s1')</script>" in shown
    assert "javascript:alert('s5')" in tree
    assert title.startswith("<script>alert('s1')</script>")
    assert [u for u in log.requests if not u.startswith("file:")] == []


# -- in the browser ----------------------------------------------------------------------------
@needs_browser
def test_report_renders_in_chromium_and_its_controls_work(chain, tmp_path):
    from ontask.testing.browser import browser, open_report

    root, summary = chain
    with browser() as b, open_report(b, root / "report.html") as (page, log):
        marks = page.evaluate("""() => [...document.querySelectorAll('[data-figure]')].map(div => [
            div.dataset.figure,
            [...div.querySelectorAll('g.trace path, g.trace .point path, g.points path, path.js-line, path.js-fill')]
              .filter(p => (p.getAttribute('d') || '').length > 6).length])""")
        # Lineage: one seed at first; a click opens its children, another click one of theirs.
        before = page.locator("#lineage-tree li.node").count()
        page.locator("#lineage-tree > li.node > .node-head").first.click()
        after_one = page.locator("#lineage-tree li.node").count()
        seed_open = page.locator("#lineage-tree > li.node").first.get_attribute("class")
        child = page.locator("#lineage-tree > li.node > ul.tree > li.node > .node-head").first
        child.click()
        after_two = page.locator("#lineage-tree li.node").count()
        instruction_visible = page.locator("#lineage-tree > li.node > ul.tree > li.node > .node-body").first.is_visible()
        # Search: a word from one row's response leaves the rows that contain it.
        rows_total = page.locator("#rows tbody tr").count()
        word = page.evaluate("""() => {
            const cells = [...document.querySelectorAll('#rows tbody tr')].map(tr => tr.innerText.toLowerCase());
            const words = cells.flatMap(t => t.split(/[^a-z0-9-]+/)).filter(w => w.length > 5);
            return words.find(w => cells.filter(c => c.includes(w)).length === 1);
        }""")
        page.fill("#rows input[type=search]", word)
        filtered = page.locator("#rows tbody tr").count()
        count_text = page.inner_text("#rows .count")
        page.fill("#rows input[type=search]", "zzzz-not-anywhere")
        none_left = page.locator("#rows tbody tr").count()
        page.fill("#rows input[type=search]", "")
        # Sort: clicking the TSS header twice orders the column descending, then ascending.
        page.click("#rows th:text-is('TSS')")
        col = page.evaluate("() => [...document.querySelectorAll('#rows th')].findIndex(th => th.textContent === 'TSS')")
        desc = page.evaluate(f"() => [...document.querySelectorAll('#rows tbody tr')].map(tr => parseFloat(tr.children[{col}].textContent))")
        page.click("#rows th:text-is('TSS')")
        asc = page.evaluate(f"() => [...document.querySelectorAll('#rows tbody tr')].map(tr => parseFloat(tr.children[{col}].textContent))")
        shot = shot_path(tmp_path, "chain-report.png")
        page.click("#tree-expand")
        page.screenshot(path=str(shot), full_page=True)
    assert log.errors == [] and log.console_errors == [], (log.errors, log.console_errors)
    assert {name for name, _ in marks} == set(summary["figures"])
    assert all(n > 0 for _, n in marks), marks
    assert before == 1 and after_one > before and "open" in seed_open and after_two >= after_one
    assert instruction_visible
    assert word and 1 <= filtered < rows_total and count_text.startswith(f"{filtered} of {rows_total}")
    assert none_left == 0
    assert desc == sorted(desc, reverse=True) and asc == sorted(asc)
    assert shot.stat().st_size > 50_000


@needs_browser
def test_100k_scored_rows_make_a_small_report_that_opens_quickly(tmp_path):
    from ontask.testing.browser import browser, open_report

    from ontask.testing.synthetic import write_scored_rows

    scored = write_scored_rows(tmp_path / "scored" / "data.jsonl", 100_000)
    run_select(scored, tmp_path / "selected" / "data.jsonl", SelectConfig(by="tss", retain=0.1))
    t0 = time.perf_counter()
    summary = build_report(tmp_path / "selected", tmp_path / "report.html")
    build_s = time.perf_counter() - t0
    with browser() as b, open_report(b, tmp_path / "report.html") as (page, log):
        rows_shown = page.locator("#rows tbody tr").count()
        page.screenshot(path=str(shot_path(tmp_path, "100k.png")))
    print(f"\n100k rows: report {summary['bytes'] / 1e6:.2f} MB, built in {build_s:.2f} s, "
          f"ready in Chromium in {log.ready_s:.2f} s")
    assert summary["bytes"] < 10_000_000
    assert log.errors == [] and log.console_errors == []
    assert rows_shown == 150
    assert log.ready_s < 6.0  # the target is 3 s on an idle machine; reported exactly above


def test_report_command_writes_the_file_and_names_bad_sources(chain, tmp_path):
    from typer.testing import CliRunner

    from ontask.cli.main import app

    root, _ = chain
    out = tmp_path / "r" / "report.html"
    ok = CliRunner().invoke(app, ["report", str(root / "selected"), "-o", str(out), "--rows-per-group", "3",
                                  "--title", "week 12"])
    assert ok.exit_code == 0, ok.output
    assert str(out.resolve()) in ok.output.replace("\n", "")
    assert "<title>week 12</title>" in out.read_text(encoding="utf-8")
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere"), "-o", str(out)])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output
    invalid = CliRunner().invoke(app, ["report", str(root), "-o", str(out), "--rows-per-group", "0"])
    assert invalid.exit_code == 2 and "rows_per_group" in invalid.output


def test_each_run_alone_gets_the_sections_it_can_fill(chain, tmp_path):
    root, _ = chain
    scored_only = build_report(root / "scored" / "data.jsonl", tmp_path / "s.html")
    assert scored_only["sections"] == ["overview", "scores", "rows", "settings"]
    data = page_data(tmp_path / "s.html")
    assert [t["name"] for t in data["figures"]["hist_tss"]["data"]] == ["rows"]  # no selection: one colour
    assert "shapes" not in data["figures"]["hist_tss_pp"]["layout"]  # and no cut-off
    assert "selection" not in [c["key"] for c in data["tables"]["rows"]["columns"]]
    augment_only = build_report(root / "augment", tmp_path / "a.html")
    assert augment_only["sections"][:3] == ["overview", "augmentation", "lineage"] and "scores" not in augment_only["sections"]
    rows = page_data(tmp_path / "a.html")["tables"]["augment_rows"]["rows"]
    assert len(rows) == len(read_jsonl(root / "augment" / "data.jsonl"))


def test_per_constraint_specificity_and_flags_are_shown(tmp_path):
    rows = [{"instruction": f"Do {i}. Use no commas. Answer in 5 words.", "input": "", "output": "o", "tss": 0.1 * i,
             "ifd": 0.8, "ppl": 3.0, "tokens": 10, "constraints": ["Use no commas", "Answer in 5 words"],
             "constraint_specificity": [0.2 - 0.1 * i, None if i == 0 else 0.05],
             "constraint_checks": [i % 2 == 0, None],
             "ignored_constraints": ["Use no commas"] if i in (3, 5) else []} for i in range(6)]
    write_jsonl(tmp_path / "scored.jsonl", rows)
    build_report(tmp_path / "scored.jsonl", tmp_path / "r.html")
    data = page_data(tmp_path / "r.html")
    traces = {t["name"].split(":")[0]: len(t["x"]) for t in data["figures"]["specificity"]["data"]}
    assert traces == {"violated (checker)": 3, "passed (checker)": 3, "no checker": 5}  # the None is left out
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "2 of 6" in html  # rows flagged
    table = data["tables"]["rows"]
    col = [c["key"] for c in table["columns"]].index("ignored_constraints")
    assert sorted(r[col] for r in table["rows"]) == ["", "", "", "", "Use no commas", "Use no commas"]


def test_report_refuses_what_it_cannot_report_on_truthfully(chain, tmp_path):
    """Unscored rows, an empty file, and a data file beside a manifest written for another
    output each exit 2 with the reason, and write no page."""
    import json as _json
    import shutil

    from typer.testing import CliRunner

    from ontask.cli.main import app

    root, _ = chain
    out = tmp_path / "r.html"
    raw = tmp_path / "raw.jsonl"
    raw.write_text(_json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    res = CliRunner().invoke(app, ["report", str(raw), "-o", str(out)])
    assert res.exit_code == 2 and "none of its 1 rows has a score" in res.output and not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = CliRunner().invoke(app, ["report", str(empty), "-o", str(out)])
    assert res.exit_code == 2 and "no rows to report on" in res.output and not out.exists()
    # another run's manifest under this file's side-file name (a copy, a rename): refused, not shown
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(root / "scored" / "data.jsonl", clash / "mine.jsonl")
    manifest = _json.loads((root / "scored" / "run.json").read_text())
    (clash / "mine.run.json").write_text(_json.dumps({**manifest, "output": str(clash / "theirs.jsonl")}))
    res = CliRunner().invoke(app, ["report", str(clash / "mine.jsonl"), "-o", str(out)])
    assert res.exit_code == 2 and "is the manifest of" in res.output and "theirs.jsonl" in res.output
    assert not out.exists()
