"""The claims ledger: docs/claims.md and the README's headline block are what the committed results give, and
each metric judges its evidence as stated (a token-efficiency number counts only under the fair protocol)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from swanbench.analysis import claims

ROOT = Path(__file__).resolve().parent.parent


def test_docs_claims_md_and_the_readme_block_are_current():
    """Fails when a committed result set or results/claims.toml changed and `swanbench claims` was not run."""
    assert claims.stale(ROOT) == [], "run `swanbench claims` (python -m swanbench.analysis.claims) and commit"


def test_every_claim_of_the_ledger_is_there_with_an_honest_scale():
    ledger = claims.build_ledger(ROOT)
    ids = [c.id for c, _ in ledger]
    assert ids == ["swan-sgd-memory", "swan-end-to-end-memory", "swan-half-the-tokens", "swan-whitening-flops",
                   "sinkgd-linear-cost", "sinkgd-3x", "sinkgd-40-percent"]
    for claim, evidence in ledger:
        assert evidence, claim.id
        for e in evidence:
            assert e.scale.startswith(("CPU toy", "CPU at the paper's shapes", "CPU kernels", "GPU",
                                       claims.NOT_MEASURED)), e
        if claim.metric == "effective_speedup":  # no GPU run yet: paper scale is not measured
            assert any(e.scale == f"{claims.NOT_MEASURED} at {claim.scale}" for e in evidence)


def _root(tmp_path: Path, claim: str) -> Path:
    (tmp_path / "results").mkdir(parents=True)
    (tmp_path / "results" / "claims.toml").write_text(claim + '\n[papers]\nSWAN = "arXiv 2412.13148"\n')
    return tmp_path


SPEEDUP = """
[[claim]]
id = "half"
paper = "SWAN"
claim = "half the tokens"
scale = "350m, 1b"
metric = "effective_speedup"
optimizer = "swan"
threshold = 2.0
"""


def _verdicts(folder: Path, rows: list[dict], tuned: bool) -> None:
    folder.mkdir(parents=True)
    base = {"optimizer": "swan", "config": "swan", "model": "micro-deep", "device": "cpu", "baseline": "adamw",
            "n_seeds": 3, "n_reached": 3, "sooner_verdict": "sooner"}
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(folder / "verdicts.csv", index=False)
    if tuned:
        (folder / "tuning.csv").write_text("optimizer\n")


@pytest.mark.parametrize("low,high,fair,verdict", [
    (2.5, 4.0, True, "supported"), (1.1, 1.6, True, "refuted"), (1.5, 2.5, True, "inconclusive"),
    (2.5, 4.0, False, "not judged: swan's chosen lr at the edge of its grid"),
])
def test_a_speedup_is_judged_only_under_the_fair_protocol(tmp_path, low, high, fair, verdict):
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "cpu-box" / "fair", [{"gmean_speedup": (low + high) / 2, "speedup_ci_low": low,
                                                  "speedup_ci_high": high, "fair_protocol": fair,
                                                  "fairness": "swan's chosen lr at the edge of its grid"}], True)
    (claim, evidence), = claims.build_ledger(root)
    assert evidence[0].verdict.startswith(verdict) and evidence[0].scale == "CPU toy (micro-deep)"
    assert evidence[0].file == "results/cpu-box/fair/verdicts.csv"
    assert evidence[-1].scale == "not yet measured at 350m, 1b"


def _speed(mean: float, low: float, high: float, **extra) -> dict:
    return {"gmean_speedup": mean, "speedup_ci_low": low, "speedup_ci_high": high, "fair_protocol": True, **extra}


def test_a_speedup_over_adamw_is_judged_against_the_control_that_could_explain_it(tmp_path):
    """5x over AdamW that AdamW with the hybrids' per-group lrs nearly matches is judged by the 1.15x left."""
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "cpu-box" / "fair", [_speed(5.35, 5.29, 5.41),
                                                  _speed(1.15, 1.03, 1.29, baseline="adamw-split")], True)
    (claim, evidence), = claims.build_ledger(root)
    fair = evidence[0]
    assert fair.value == ("5.35 [5.29, 5.41] vs adamw (3/3 seeds reached its final loss); "
                          "1.15 [1.03, 1.29] vs adamw-split (3/3 seeds reached its final loss)")
    assert fair.verdict.startswith("refuted (threshold 2") and fair.verdict.endswith(
        "against the strongest baseline, adamw-split)")


def test_a_control_tuned_unfairly_leaves_the_claim_unjudged_and_says_what_adamw_alone_gives(tmp_path):
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "cpu-box" / "fair", [
        _speed(5.35, 5.29, 5.41),
        _speed(float("nan"), float("nan"), float("nan"), baseline="adamw-split", n_reached=0, fair_protocol=False,
               fairness="adamw-split's chosen lr at the edge of its grid")], True)
    (claim, evidence), = claims.build_ledger(root)
    e = evidence[0]
    assert e.value.endswith("; did not reach adamw-split's final loss (0/3 seeds)")
    assert e.verdict == ("not judged: adamw-split's chosen lr at the edge of its grid "
                         "(against adamw alone: supported)")


def test_cells_of_one_table_are_judged_apart(tmp_path):
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "cpu-box" / "fair", [_speed(2.5, 2.2, 2.9), _speed(1.1, 1.0, 1.2, model="mini")], True)
    (claim, evidence), = claims.build_ledger(root)
    verdicts = {e.scale: e.verdict.split(" ")[0] for e in evidence}
    assert verdicts["CPU toy (micro-deep)"] == "supported" and verdicts["CPU toy (mini)"] == "refuted"


def test_a_result_set_without_tuning_is_shown_and_not_judged(tmp_path):
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "cpu-box" / "old", [{"gmean_speedup": 5.6, "speedup_ci_low": 4.6,
                                                 "speedup_ci_high": 6.8}], False)
    _verdicts(root / "results" / "nvidia-h200" / "big", [{"gmean_speedup": 1.2, "speedup_ci_low": 1.1, "speedup_ci_high": 1.3,
                                                 "fair_protocol": True, "model": "1b", "device": "cuda"}], True)
    (claim, evidence), = claims.build_ledger(root)
    assert evidence[0].scale == "GPU at paper scale (1b)" and evidence[0].verdict.startswith("refuted")
    old = evidence[1]
    assert old.value.startswith("5.6 [4.6, 6.8] vs adamw") and old.verdict.startswith("not judged: not under the fair")
    assert len(evidence) == 2  # paper scale measured: no "not yet measured" line
    summary = claims.render_summary(root)
    assert "| GPU at paper scale (1b) | 1.2 [1.1, 1.3] vs adamw" in summary and "| yes |" in summary


def test_local_output_under_results_is_not_evidence(tmp_path):
    """The quickstart writes results/quickstart/ (command 1) before the tests run (command 2): only the
    committed folders count, so the ledger a clone ships stays current on a newcomer's machine."""
    root = _root(tmp_path, SPEEDUP)
    _verdicts(root / "results" / "quickstart", [_speed(9.0, 8.0, 10.0)], True)
    _verdicts(root / "results" / "cpu-box" / "fair", [_speed(2.5, 2.2, 2.9)], True)
    (claim, evidence), = claims.build_ledger(root)
    assert [e.file for e in evidence if e.file != "–"] == ["results/cpu-box/fair/verdicts.csv"]


def test_the_committed_folders_are_the_ones_git_keeps():
    kept = [line[len("!results/"):].rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
            if line.startswith("!results/")]
    assert sorted(kept) == sorted(claims.COMMITTED_SETS)


def test_nothing_measured_says_so(tmp_path):
    root = _root(tmp_path, SPEEDUP.replace("effective_speedup", "memory_reduction").replace("350m, 1b", "1b")
                 + 'model = "1b"\n')
    (claim, evidence), = claims.build_ledger(root)
    assert [e.verdict for e in evidence] == [claims.NOT_MEASURED]
    assert "| half | SWAN (arXiv 2412.13148) | half the tokens | 1b | – | not yet measured at 1b |" in \
        claims.render_ledger(root)


def test_the_cost_slope_and_its_interval():
    slope, low, high = claims.slope_interval([0, 1, 2, 3], [1.0, 1.1, 0.9, 1.0])
    assert slope == pytest.approx(-0.02) and low < slope < high
    slope, low, high = claims.slope_interval([0, 1, 2, 3], [0, 0.5, 1.0, 1.5])
    assert slope == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_a_bad_claims_file_is_one_line_naming_the_key(tmp_path):
    root = _root(tmp_path, SPEEDUP.replace("metric =", "metrik = 1\nmetric ="))
    with pytest.raises(claims.ClaimsError, match=r"claims.toml: claim\[0\].metrik: unknown key"):
        claims.load_claims(root)
    root2 = _root(tmp_path / "b", SPEEDUP.replace('"effective_speedup"', '"speed"'))
    with pytest.raises(claims.ClaimsError, match=r"claim\[0\].metric: unknown metric 'speed'"):
        claims.load_claims(root2)


def test_the_readme_block_is_replaced_in_place():
    text = f"intro\n{claims.BEGIN}\nold\n{claims.END}\noutro\n"
    assert claims.readme_with_summary(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(claims.ClaimsError, match="no claims block"):
        claims.readme_with_summary("no markers", "NEW")
