"""benchmarks/growth_pays.py's efficiency figures, against hand computations on made-up rows."""
from benchmarks.growth_pays import efficiency, paper_step_ratio


def _rows(method, step_top1, seeds=(0, 1)):
    return [{"method": method, "seed": s, "step": t, "top1_mean": q + (1 if s else -1), "tflops_cum": 2.0 * t,
             "tflops_step": 2.0} for s in seeds for t, q in step_top1.items()]


def test_paper_step_ratio_is_the_budget_fraction_where_growclip_reaches_tfs_chosen():
    rows = _rows("growclip", {3: 50.0, 4: 60.0}) + _rows("tfs-chosen", {4: 57.5})
    # mean over seeds: 50 at the start of step 4, 60 at its end; 57.5 is reached 3/4 of the way
    assert paper_step_ratio(rows) == {"paper_step_ratio": 0.75, "paper_step_note": "linear between the step's two ends"}
    below = paper_step_ratio(_rows("growclip", {3: 50.0, 4: 55.0}) + _rows("tfs-chosen", {4: 57.5}))
    assert below["paper_step_ratio"] is None and "55.00" in below["paper_step_note"] and "57.50" in below["paper_step_note"]
    free = paper_step_ratio(_rows("growclip", {3: 58.0, 4: 60.0}) + _rows("tfs-chosen", {4: 57.5}))
    assert free["paper_step_ratio"] == 0.0 and "step 3 model (58.00)" in free["paper_step_note"]


def test_cumulative_ratio_crosses_the_growclip_curve():
    # growclip: (2 TFLOP, 40), (4, 50), (6, 60); target 55 is crossed at 5 TFLOP; tfs-chosen's step 4 spends 2
    rows = _rows("growclip", {1: 40.0, 2: 50.0, 3: 60.0}) + _rows("tfs-chosen", {3: 55.0})
    eff = efficiency(rows)
    assert eff["growclip_tflops_to_target"] == 5.0 and eff["tfs_chosen_quality_flops_ratio"] == 2.5


def test_efficiency_against_the_headroom_maps_from_scratch_run():
    from benchmarks.growth_pays import efficiency_vs_headroom

    rows = [{"method": "growclip", "seed": 0, "step": t, "selection_top1": q, "tflops_cum": c}
            for t, q, c in ((1, 30.0, 1.0), (2, 40.0, 3.0), (3, 50.0, 6.0), (4, 60.0, 10.0))]
    headroom = [{"arch": "wider", "match": "flops", "data_step": 4, "top1_mean": q, "tflops": 4.0} for q in (56.0, 58.0)]
    eff = efficiency_vs_headroom(rows, headroom + [{"arch": "wider", "match": "samples", "data_step": 4,
                                                    "top1_mean": 99.0, "tflops": 9.0}], "wider")
    # target 57 (mean of the two equal-FLOPs runs): 70% of the way from step 3 (50) to step 4 (60); reached at
    # 6 + 0.7 x 4 = 8.8 cumulative TFLOP, 2.2 x the reference's 4
    assert eff["reference_selection_top1"] == 57.0 and eff["paper_step_ratio_selection"] == 0.7
    assert eff["cumulative_ratio_selection"] == 2.2
