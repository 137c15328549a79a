import re

import pytest

from synthscale.cli import main
from synthscale.evaluate.record import EvalRecord
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study.report import build_report
from synthscale.study.results import ResultsStore
from tests.fixtures.synthetic_study import NOTE, make_study

VERDICTS = {fnd.CONFIRMED, fnd.NOT_CONFIRMED, fnd.INCONCLUSIVE}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    make_study(root)
    return root


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("flipped")
    make_study(root, flip=True, grids=False)
    return cmp.load_study(root)


def test_report_builds_from_a_stored_study(study, capsys):
    assert main(["report", str(study), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    html_path, md_path = study / "report" / "report.html", study / "report" / "report.md"
    assert f"report: {html_path}" in out and f"summary: {md_path}" in out
    html = html_path.read_text()
    # self-contained: every image is embedded, nothing is fetched
    assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    assert html.count("data:image/png;base64,") == 5 + 3  # five figures, a sample grid per objective
    for title in ("Fig. 2", "Fig. 3", "Fig. 4", "Fig. 5", "EMA vs raw"):
        assert title in html
    assert "2 per multiply-add" in html and "<td>instrument: extractor</td><td>probe:synthetic</td>" in html
    # captions say in words what a figure shows; instrument settings live in the How measured table only
    for caption in re.findall(r"<figcaption>(.*?)</figcaption>", html):
        assert not re.search(r"\w=\S", caption), caption
    assert NOTE in html  # the test data says what it is
    # the failed run is shown as failed, with its error
    row = re.search(r'<tr class="failed">(.*?)</tr>', html).group(1)
    assert "flow-4x128-diverged" in row and "loss is NaN at step 212" in row
    # the six findings, each with a verdict
    for n in range(1, 7):
        assert re.search(rf"<h3>{n}\. .*?<span class=\"v (confirmed|not-confirmed|inconclusive)\">", html)
    # prompt following on test and held-out prompts apart, and the gap
    assert "Prompt following: test vs held-out combinations" in html and "gap [95 %]" in html
    # the decision rules' calibration table, as stored by benchmarks/calibration.py
    assert "<h2>Decision rules: calibration</h2>" in html and "95 % upper bound" in html
    md = md_path.read_text()
    assert "## Findings on this run" in md and "flow-4x128-diverged" in md and "| failed |" in md
    for fig in re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", md):
        assert (study / "report" / fig).is_file()
    assert len(re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", md)) == 5


def test_findings_follow_the_numbers(study, flipped):
    data = cmp.load_study(study)
    # the fixture's curves are drawn so findings 2-6 hold; the rules must see it
    for finding in (
        fnd.finding_prompt_following(data),
        fnd.finding_quality_crossover(data, {}),
        fnd.finding_inference(data),
        fnd.finding_ema(data),
        fnd.finding_autoencoder(data),
    ):
        assert finding.verdict == fnd.CONFIRMED, (finding.number, finding.evidence)
        assert finding.evidence and finding.rule
    # reversed curves: diffusion follows prompts best, leads on FD at low compute, gains from steps and EMA as
    # little as the token methods
    assert fnd.finding_prompt_following(flipped).verdict == fnd.NOT_CONFIRMED
    assert fnd.finding_quality_crossover(flipped, {}).verdict == fnd.NOT_CONFIRMED
    assert fnd.finding_inference(flipped).verdict == fnd.NOT_CONFIRMED
    assert fnd.finding_ema(flipped).verdict == fnd.NOT_CONFIRMED


def test_recommendation_is_computed_from_the_results(study):
    recs = {r.criterion: r for r in fnd.recommendations(cmp.load_study(study))}
    assert recs["image quality"].winner == "flow"  # lowest FD at the budget in the fixture
    assert recs["latency (batch 1)"].winner == "autoregressive"
    assert recs["throughput"].winner == "autoregressive"
    assert recs["prompt following"].winner == "autoregressive"
    assert all(r.budget == pytest.approx(1e13) for r in recs.values())


def _tiny_study(root, milestones: int) -> None:
    store = ResultsStore.of(root)
    store.add_run("only", "flow", "2x64", 256, "kl-f4c4", status="done")
    store.add_run("broken", "masked", "2x64", 256, "lfq-f8", status="failed", error="ValueError: bad latent cache")
    store.add_records(
        [
            EvalRecord(
                run="only",
                objective="flow",
                size="2x64",
                params=1000,
                params_nonembedding=900,
                data_size=256,
                autoencoder="kl-f4c4",
                milestone=m,
                step=m,
                train_flops=10.0 ** (9 + m),
                weights="ema",
                steps=20,
                cfg_scale=1.0,
                sample_flops_per_image=1e6,
                metrics={"loss": 1.0 + 2.0 / (m + 1), "fd_probe": 50.0 / (m + 1)},
            )
            for m in range(milestones)
        ]
    )
    store.close()


def test_a_thin_study_reports_what_it_cannot_say(tmp_path):
    _tiny_study(tmp_path, milestones=3)
    html = build_report(tmp_path, n_boot=10)["html"].read_text()
    assert "Skipped: no objective was trained with more than one autoencoder" in html
    assert "Skipped: no run was evaluated at more than one sampling-step count" in html
    assert "Skipped: no run was evaluated with both EMA and raw weights" in html
    assert "Skipped: no sample grids were stored" in html
    assert "distinct compute values; a 3-parameter fit needs" in html  # no fit from 3 points
    assert "bad latent cache" in html
    data = cmp.load_study(tmp_path)
    verdicts = [f.verdict for f in fnd.all_findings(data, {}, {"flow": "3 points"}, {})]
    assert verdicts == [fnd.INCONCLUSIVE] * 6  # nothing here can confirm or refute a finding
    recs = fnd.recommendations(data)
    assert {r.criterion for r in recs if r.winner is None} == {"prompt following", "latency (batch 1)", "throughput"}


def test_report_of_a_missing_study_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_main_autoencoder_is_the_grid_s_not_the_ablation_s():
    runs = [{"objective": "flow", "autoencoder": "kl-f4c8"}, {"objective": "flow", "autoencoder": "kl-f4c4"}]
    records = [{"objective": "flow", "autoencoder": a} for a in ("kl-f4c8", "kl-f4c8", "kl-f4c4", "kl-f4c4")]
    # a tie in runs and records: the study spec's ablation list decides
    spec = '{"name": "s", "ablation_autoencoders": ["../autoencoders/kl-f4c8.yaml"]}'
    assert cmp.main_autoencoders({"study": spec}, runs, records) == {"flow": "kl-f4c4"}
    spec = '{"name": "s", "ablation_autoencoders": ["../autoencoders/kl-f4c4.yaml"]}'
    assert cmp.main_autoencoders({"study": spec}, runs, records) == {"flow": "kl-f4c8"}
    # more runs win without a spec; an explicit choice wins over everything
    assert cmp.main_autoencoders({}, runs + runs[1:], records) == {"flow": "kl-f4c4"}
    assert cmp.main_autoencoders({"main_autoencoders": '{"flow": "kl-f4c8"}'}, runs + runs[1:], records) == {
        "flow": "kl-f4c8"
    }


def test_quality_differences_need_fd_and_kid_to_agree():
    a = {"metrics": {"fd_probe": 100.0, "kid": 0.010, "kid_std": 0.001}}
    b = {"metrics": {"fd_probe": 150.0, "kid": 0.020, "kid_std": 0.001}}
    assert cmp.compare_quality(a, b) == 1 and cmp.compare_quality(b, a) == -1
    kid_disagrees = {"metrics": {"fd_probe": 150.0, "kid": 0.005, "kid_std": 0.001}}
    assert cmp.compare_quality(a, kid_disagrees) == 0
    kid_overlaps = {"metrics": {"fd_probe": 150.0, "kid": 0.012, "kid_std": 0.002}}
    assert cmp.compare_quality(a, kid_overlaps) == 0
    assert cmp.compare_quality(a, {"metrics": {"fd_probe": 105.0}}) == 0  # within 10 %, no KID to say more
    assert cmp.compare_quality(a, {"metrics": {"fd_probe": 130.0}}) == 1
    assert cmp.compare_quality(a, {"metrics": {}}) is None


def test_sample_grids_show_each_objective_s_best_model_at_matched_compute(study):
    from synthscale.study.report import _sample_grids

    data = cmp.load_study(study)
    chosen, note = _sample_grids(data)
    assert {g["objective"] for g in chosen} == set(data.objectives) and "training FLOPs" in note
    for g in chosen:
        at_level = [
            r
            for r in data.records
            if r["objective"] == g["objective"]
            and r["milestone"] == g["milestone"]
            and (r["weights"], r["steps"], r["cfg_scale"]) == (g["weights"], g["steps"], g["cfg_scale"])
            and r["autoencoder"] == data.main_autoencoders[r["objective"]]
            and {a["run"] for a in data.artifacts if a["kind"] == "samples"} >= {r["run"]}
        ]
        assert g["fd_probe"] == min(r["metrics"]["fd_probe"] for r in at_level)
        assert f"fd-probe {g['fd_probe']:.3g}" in g["label"]


def test_html_and_markdown_carry_the_same_content(study):
    from synthscale.study import report_doc as doc
    from synthscale.study.report import analyse
    from synthscale.study.report_sections import build_document

    d = build_document(analyse(study, n_boot=10), study / "report")
    html, md = doc.to_html(d), doc.to_markdown(d)
    pieces = doc.texts(d.blocks)
    assert len(pieces) > 200
    for t in pieces:
        assert doc._e(t) in html and doc.md_escape(t) in md, t
    assert html.count("<table>") == md.count("\n|---") == sum(isinstance(b, doc.Table) for b in _walk(d.blocks))
    assert html.count("<img ") == md.count("![") == 5 + 3


def _walk(blocks):
    for b in blocks:
        yield b
        if hasattr(b, "blocks"):
            yield from _walk(b.blocks)


def test_recommendation_and_findings_name_the_same_best_models(study):
    data = cmp.load_study(study)
    q = cmp.DEFAULT_METRICS.quality
    top = max(fnd.best_models(data, q))
    best = fnd.best_models(data, q)[top]
    [rec] = [r for r in fnd.recommendations(data) if r.criterion == "image quality" and r.budget == top]
    key = lambda r: (r["run"], r["milestone"], cmp.setting(r))  # noqa: E731
    assert {o: key(r) for o, r in rec.candidates.items()} == {o: key(r) for o, r in best.items()}
    assert all(cmp.setting(r) == data.settings[o] for o, r in best.items())  # the primary setting, always
    f3 = fnd.finding_quality_crossover(data, {})
    [line] = [e for e in f3.evidence if e.startswith("highest level")]
    for o in ("autoregressive", "flow"):
        assert f"{best[o]['size']} {q} {cmp.fmt(cmp.value(best[o], q))}" in line
    assert "kid check z = " in line and "kid 0." not in line  # KID as its check decides, not its raw value


@pytest.mark.parametrize("small_best", [False, True])
def test_fig5_shows_each_paradigm_s_best_model_at_matched_compute(tmp_path, small_best):
    from synthscale.study import plots

    make_study(tmp_path, grids=False, small_best=small_best)
    data = cmp.load_study(tmp_path)
    level, sweeps = plots._sweeps(data)
    best = fnd.best_models(data, "fd_probe")[level]
    assert set(sweeps) == set(data.objectives)
    for obj, rs in sweeps.items():
        assert {(r["run"], r["milestone"]) for r in rs} == {(best[obj]["run"], best[obj]["milestone"])}
        assert rs[0]["size"] == ("2x64" if small_best else "4x128")
    assert len(sweeps["flow"]) == 5 and len(sweeps["autoregressive"]) == 1  # the sweep, and next-token's one point
    assert plots.quality_vs_inference_flops(data).png is not None


def test_finding_4_counts_the_decoder_and_old_records_say_it_is_missing(study, tmp_path):
    f4 = fnd.finding_inference(cmp.load_study(study))
    cost = [e for e in f4.evidence if e.startswith("(a)")]
    assert cost and all("(decoder included)" in e and "+ decoder 4.8" in e for e in cost)
    heavy = cmp.load_study(study)  # a decoder as costly as 30 next-token samples: nothing is "by far" cheaper
    for r in heavy.records:
        r["decode_flops_per_image"] = 1e9
    assert "(a) size 2x64" in " ".join(fnd.finding_inference(heavy).evidence)
    assert fnd._cost_part(heavy, fnd.Finding(4, "", "", "")) == fnd.INCONCLUSIVE  # 1.2×: under the 2× bar
    make_study(tmp_path, grids=False, decoder=False)  # records from before the decoder was counted
    old = cmp.load_study(tmp_path)
    assert all(r["decode_flops_per_image"] is None for r in old.records)
    f4_old = fnd.finding_inference(old)
    assert f4_old.verdict != fnd.CONFIRMED  # the generator alone cannot confirm "by far the cheapest"
    assert all("the decoder's FLOPs were not recorded" in e for e in f4_old.evidence if e.startswith("(a)"))
    md = build_report(tmp_path, n_boot=10)["markdown"].read_text()
    assert "| not recorded |" in md and "not timed" in md


def test_single_seed_verdicts_on_differences_are_at_most_inconclusive(study):
    """The fixture has one seed per cell: its rules confirm findings 2-5 (test_findings_follow_the_numbers), but
    training noise is unmeasured, so the report's verdicts on differences stay inconclusive and say why."""
    from synthscale.study import replicates as rep

    data = cmp.load_study(study)
    assert not rep.training_noise_measured(data.records)
    found = fnd.all_findings(data, {}, {}, {})
    assert all(f.verdict == fnd.INCONCLUSIVE for f in found if f.number in fnd.DIFFERENCE_FINDINGS)
    assert sum("training noise is unmeasured" in " ".join(f.evidence) for f in found) >= 4
    for r in fnd.recommendations(data):
        if r.winner is not None and r.metric in ("fd_probe", "prompt_acc"):  # no significant winner: all tie
            assert set(r.tie_with) == {o for o in data.objectives if f"{o}:" in r.detail} - {r.winner}
    build_report(study, n_boot=10)
    md = (study / "report" / "report.md").read_text()
    assert "## Comparison controls" in md and "Training noise is unmeasured" in md
    assert "the stated conservative default" in md and "assumed without replicates" in md


def test_replicate_seeds_average_into_one_record_per_cell(study, tmp_path):
    """Three seeds of every fixture run: one record per cell (the lowest seed's run id), its value the seeds' mean,
    its interval wider than any one seed's, and the single-seed rule no longer applies."""
    from synthscale.study import replicates as rep

    with ResultsStore.of(study, create=False) as src:
        runs, records, aes = src.runs(), src.records(), src.autoencoders()
    shift = {0: 0.0, 1: 0.03, 2: -0.03}
    with ResultsStore.of(tmp_path) as dst:
        for a in aes:
            dst.add_autoencoder(a["name"], a["kind"], a["metrics"], config=a["config"])
        for s in shift:
            for r in runs:
                name = r["run"] + (f"-s{s}" if s else "")
                dst.add_run(
                    name,
                    r["objective"],
                    r["size"],
                    r["data_size"],
                    r["autoencoder"],
                    status=r["status"],
                    budget_flops=r["budget_flops"],
                    config={**(r["config"] or {}), "seed": s},
                )
            batch = []
            for r in records:
                m = dict(r["metrics"])
                if "prompt_acc" in m:
                    for k in ("prompt_acc", "prompt_acc_lo", "prompt_acc_hi"):
                        m[k] = m[k] + shift[s] if k in m else None
                    m = {k: v for k, v in m.items() if v is not None}
                rr = {k: v for k, v in r.items() if k != "config_hash"}
                batch.append(dict(rr, run=r["run"] + (f"-s{s}" if s else ""), metrics=m))
            dst.add_records(batch)
    data = cmp.load_study(tmp_path)
    assert len(data.records) == len(records) and len(data.seed_records) == 3 * len(records)
    assert rep.training_noise_measured(data.records)
    one = {(r["run"], r["milestone"], r["weights"], r["steps"], r["cfg_scale"]): r for r in records}
    for r in data.records:
        assert r["seeds"] == [0, 1, 2]
        base = one[(r["run"], r["milestone"], r["weights"], r["steps"], r["cfg_scale"])]["metrics"]
        if "prompt_acc_lo" in base:
            assert r["metrics"]["prompt_acc"] == pytest.approx(base["prompt_acc"])
            assert r["metrics"]["prompt_acc_hi"] - r["metrics"]["prompt_acc_lo"] > (
                base["prompt_acc_hi"] - base["prompt_acc_lo"]
            )
    found = fnd.all_findings(data, {}, {}, {})
    assert not any("training noise is unmeasured" in " ".join(f.evidence) for f in found)
