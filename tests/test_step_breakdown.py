"""benchmarks/step_breakdown.py: a step's wall time split from its run folder's records, by hand."""
import json

import pytest

from benchmarks.step_breakdown import PARTS, breakdown


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_breakdown_splits_a_growth_step_and_leaves_start_up_as_the_rest(tmp_path):
    s = tmp_path / "step2"
    _write(s / "pim1" / "done.json", {"wall_s": 2.0, "kept": {}})
    _write(s / "pim3" / "done.json", {"wall_s": 1.0, "kept": {}})
    # the final phase's wall time holds both growths (they run inside it), its set-up, 2 ranks x 15 s of steps
    _write(s / "final" / "done.json", {"wall_s": 20.0, "setup_s": 1.0, "device_s": 30.0, "save_s": 0.5,
                                       "train_flops": 7e12})
    _write(s / "gas" / "done.json", {"wall_s": 4.0, "index": 3, "device": "cpu"})   # GAS trains nothing
    _write(s / "finish.json", {"consolidate_s": 0.2, "eval_s": 1.0})
    got = breakdown(tmp_path, 2, total=34.0, ranks=2)
    want = {"PIM + kept check": 3.0, "engine set-up": 1.0, "training": 15.0, "checkpoint writes": 0.5,
            "loop overhead": 20.0 - 1.0 - 15.0 - 0.5 - 3.0, "search (GAS)": 4.0, "write model": 0.2,
            "evaluation": 1.0}
    want["start-up"] = 34.0 - 20.0 - 4.0 - 0.2 - 1.0      # what no record covers
    assert set(got["parts"]) == set(PARTS)
    assert got["parts"] == pytest.approx(want) and sum(got["parts"].values()) == pytest.approx(34.0)
    assert got["phases"] == 1 and got["train_flops"] == 7e12
