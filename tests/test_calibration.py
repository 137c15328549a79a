"""The decision rules on simulated studies with a known truth: the calibration itself (fixed seed, enough
simulations to bound the false-confirmation rate) and single studies fed through each finding."""

import dataclasses

import numpy as np
import pytest

from synthscale.study import calibration as cal
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study import simulate as sim

RULES = (2, 3, 4, 5, 6)  # finding 1 needs loss fits (slow): tests/test_calibration.py::test_power_law_rule
PRECISE = dataclasses.replace(sim.Design(), n_images=4000, fd_run_sd=0.01, fd_step_sd=0.01, prompt_run_sd=0.02)
LOW_N = dataclasses.replace(sim.Design(), n_images=16)


def test_every_rule_confirms_a_false_claim_at_most_5_percent_of_the_time():
    """150 simulations per claim-false scenario (two per finding, at the claim's boundary): with at most two
    confirmations the one-sided 95 % upper bound is ≤ 4.1 %, so this bounds the rate below 5 %."""
    table = cal.calibrate(numbers=RULES, n_false=150, n_true=40, seed=0)
    for number, row in table["findings"].items():
        assert row["false_confirm_upper"] <= fnd.FALSE_CONFIRM_LIMIT, (number, row)
    # power at the stated effects, default study's n (measured 1.0 and 0.75 at 40 simulations)
    assert table["findings"]["3"]["power"] >= 0.8
    assert table["findings"]["5"]["power"] >= 0.5


def test_upper_bound_is_clopper_pearson():
    assert cal.upper_bound(0, 59) == pytest.approx(1 - 0.05 ** (1 / 59))  # the rule of three: ≈ 3/n
    assert cal.upper_bound(0, 59) < 0.05 < cal.upper_bound(0, 58)
    assert cal.upper_bound(3, 3) == 1.0


@pytest.mark.parametrize("number", RULES)
def test_a_true_claim_with_a_large_effect_is_confirmed(number):
    _, (_, truth) = cal.SCENARIOS[number]
    data = sim.simulate_study(np.random.default_rng(number), truth, PRECISE)
    assert cal.judge(number, data) == fnd.CONFIRMED


CLEARLY = {  # the calibration's boundary scenarios moved well past the boundary, for single-study checks
    "masked gains 20 % with steps (the margin)": dataclasses.replace(
        sim.Truth(), steps_gain=(("flow", 0.5), ("masked", 0.4))
    ),
    "prompt accuracy moves by the margin (0.05)": dataclasses.replace(sim.Truth(), ae_prompt=0.15),
}


@pytest.mark.parametrize("number", RULES)
def test_a_false_claim_is_not_confirmed(number):
    false_scenarios, _ = cal.SCENARIOS[number]
    for i, (label, truth) in enumerate(false_scenarios):
        truth = CLEARLY.get(label, truth)
        data = sim.simulate_study(np.random.default_rng([number, i]), truth, PRECISE)
        assert cal.judge(number, data) != fnd.CONFIRMED, label


NO_EFFECT = {  # the claim's effect set to nothing, far from any margin a rule could confirm on
    2: dataclasses.replace(sim.Truth(), prompt_ceiling=tuple((o, 0.6) for o in sim.OBJECTIVES)),
    3: dataclasses.replace(sim.Truth(), fd_law=tuple((o, (6.0, 90.0, 0.4)) for o in sim.OBJECTIVES)),
    5: dataclasses.replace(sim.Truth(), ema_gain=tuple((o, 0.0) for o in sim.OBJECTIVES)),
}


@pytest.mark.parametrize("number", sorted(NO_EFFECT))
def test_no_effect_at_low_n_is_inconclusive_never_confirmed(number):
    verdicts = [
        cal.judge(number, sim.simulate_study(np.random.default_rng(s), NO_EFFECT[number], LOW_N)) for s in range(5)
    ]
    assert fnd.CONFIRMED not in verdicts and fnd.INCONCLUSIVE in verdicts


def test_barely_needs_equivalence_not_a_missing_effect():
    """4(b): masked's steps gain with an interval far wider than the margin is inconclusive, not confirmed."""
    data = sim.simulate_study(np.random.default_rng(0), None, LOW_N)
    finding = fnd.finding_inference(data)
    assert "parts (a), (b), (c): confirmed, inconclusive" in finding.evidence[-1]


def test_findings_take_the_decisive_metrics_as_a_parameter():
    data = sim.simulate_study(np.random.default_rng(0), None, PRECISE)
    for r in data.records:  # the same numbers under another instrument's names
        m = r["metrics"]
        for old, new in (("fd_probe", "fd_clip"), ("prompt_acc", "r_precision")):
            for suffix in ("", "_lo", "_hi"):
                m[new + suffix] = m.pop(old + suffix)
    other = cmp.DecisiveMetrics(quality="fd_clip", prompt="r_precision", quality_check=None)
    assert fnd.finding_quality_crossover(data, {}, other).verdict == fnd.CONFIRMED
    assert "fd_clip" in fnd.finding_quality_crossover(data, {}, other).rule
    assert fnd.finding_quality_crossover(data, {}).verdict == fnd.INCONCLUSIVE  # fd_probe is no longer there


def test_a_rule_the_calibration_does_not_support_cannot_confirm():
    made = lambda: [fnd.Finding(n, "claim", fnd.CONFIRMED, "rule") for n in (2, 3)]  # noqa: E731
    table = {"findings": {"2": {"false_confirm_upper": 0.02}, "3": {"false_confirm_upper": 0.08}}}
    f2, f3 = fnd.apply_calibration(made(), table)
    assert f2.verdict == fnd.CONFIRMED and f3.verdict == fnd.INCONCLUSIVE and "8.0%" in f3.evidence[-1]
    assert [f.verdict for f in fnd.apply_calibration(made(), {"findings": {}})] == [fnd.INCONCLUSIVE] * 2


def test_the_stored_table_covers_every_finding_and_meets_the_limit():
    table = cal.load_table()
    assert table is not None, "run: python benchmarks/calibration.py --store"
    assert sorted(table["findings"]) == [str(n) for n in range(1, 7)]
    for number, row in table["findings"].items():
        assert row["n_false"] >= (100 if number == "1" else 200) and 0 <= row["power"] <= 1
        assert row["false_confirm_upper"] <= fnd.FALSE_CONFIRM_LIMIT, (number, row)
    assert table["findings"]["1"]["design"].startswith("6 run(s)")  # finding 1 where a run bootstrap is possible
    # a report calls the table stale when the rules changed after it was written; main must not ship one
    assert table["rules_version"] == cal.rules_version(), "the rules changed: python benchmarks/calibration.py --store"


def test_a_report_calibrates_at_its_own_study_s_design():
    """More images shrink evaluation noise but not training noise: the design (and so the veto) is the study's."""
    data = sim.simulate_study(np.random.default_rng(0), None, dataclasses.replace(sim.Design(), n_images=64))
    for r in data.records:
        r["instruments"] = {"n": 64}
    design = cal.study_design(data)
    assert design.n_images == 64 and len(design.sizes) == 2 and len(design.milestones) == 6
    assert design.ablation == ("flow",)
    table = cal.for_study(data, {"findings": {"1": {"false_confirm_upper": 0.01}}}, n_false=20, n_true=5)
    assert sorted(table["findings"]) == [str(n) for n in range(1, 7)] and "64 images" in table["design_text"]


@pytest.mark.slow
def test_power_law_rule_calibration():
    table = cal.calibrate(
        numbers=(1,),
        n_false=60,
        n_true=20,
        design=dataclasses.replace(sim.Design(), sizes=(("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6))),
        n_boot=40,
    )
    row = table["findings"]["1"]
    assert row["false_confirm_upper"] <= fnd.FALSE_CONFIRM_LIMIT, row


def test_calibration_simulates_the_seed_noise_a_study_measured():
    """Without replicates the calibration assumes the stated conservative noise; with them it simulates what the
    study's seeds measured, and the false-confirmation bound holds (≤ 5 %) at that noise."""
    rng = np.random.default_rng(3)
    single = sim.simulate_study(rng)
    assert cal.seed_noise(single).source == "assumed" and cal.study_design(single).seeds == 1
    assert cal.study_design(single).prompt_run_sd == pytest.approx(
        cal._run_sd(cal.ASSUMED_PROMPT_SEED_SD, sim.Design().prompt_step_sd)
    )
    noisy = dataclasses.replace(sim.Design(), seeds=4, prompt_run_sd=0.6, fd_run_sd=0.3)
    data = sim.simulate_study(rng, None, noisy)
    noise = cal.seed_noise(data)
    assert noise.source == "measured" and noise.seeds == 4
    assert 0.4 < noise.prompt_used < 1.2 and 0.2 < noise.fd_used < 0.6  # run + AR(1) + evaluation noise
    design = cal.study_design(data)
    assert design.seeds == 4 and "4 seed(s) per cell" in cal.describe(design)
    table = cal.calibrate((2, 3, 5), n_false=60, n_true=5, design=design)
    for number, row in table["findings"].items():
        assert row["false_confirm_upper"] <= fnd.FALSE_CONFIRM_LIMIT, (number, row)
