"""The comparison report over run folders (growclip_train/compare.py): each table's numbers against a hand
computation from the records written into small run folders (the files a real run writes, with the
fields the report reads)."""
import json
import re
from pathlib import Path

from growclip_train.compare import is_comparison, load_runs, table1, table5, table9, tic_summary, write_comparison

TASKS = {"colour": 8, "shape": 6}


def _write(p: Path, obj) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj))


def make_run(root: Path, name: str, steps: dict, method="growclip", ablate=(), candidate=None) -> None:
    """steps: {t: (params, {task: top1}, samples, flops, device_s, retrieval mean R@1 by step j)}."""
    d = root / name
    _write(d / "method.json", {"method": method, "ablate": list(ablate), "candidate": candidate})
    for t, (params, zs, samples, flops, dev, by_step) in steps.items():
        s = d / f"step{t}"
        _write(s / "arch.json", {"img_conv_layers": 1, "img_blocks": t, "img_heads": 2, "txt_blocks": 1,
                                 "txt_heads": 2, "shared_blocks": 0, "params": params})
        r = {"R@1": 0.5, "R@5": 0.7, "R@10": 0.9}
        _write(s / "eval.json", {
            "zero_shot": {k: {"top1": v, "top5": 1.0, "num_classes": TASKS[k]} for k, v in zs.items()},
            "retrieval": {"image_to_text": r, "text_to_image": {**r, "R@1": 0.3}},
            "retrieval_by_step": {str(j): {"mean_R@1": v} for j, v in enumerate(by_step, 1)}})
        # two phases: the step's cost is their sum
        _write(s / "supernet" / "done.json", {"samples_seen": samples // 4, "train_flops": flops / 4,
                                              "device_s": dev / 4, "wall_s": 1.0})
        _write(s / "final" / "done.json", {"samples_seen": samples - samples // 4, "train_flops": flops * 3 / 4,
                                           "device_s": dev * 3 / 4, "wall_s": 1.0})


def _row(lines, first_cell):
    row = next(line for line in lines if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_tables_from_run_folders(tmp_path):
    step1 = (1000, {"colour": 0.25, "shape": 0.5}, 400, 4e12, 10.0, [0.2, 0.1])
    make_run(tmp_path, "growclip", {1: step1, 2: (1500, {"colour": 0.5, "shape": 0.75}, 800, 1e13, 30.0, [0.3, 0.4])})
    make_run(tmp_path, "tfs", {1: step1, 2: (1000, {"colour": 0.375, "shape": 0.5}, 800, 8e12, 20.0, [0.1, 0.5])},
             method="tfs")
    make_run(tmp_path, "tfs-half", {1: (300, {"colour": 0.5, "shape": 0.5}, 400, 1e12, 5.0, [0.1, 0.1]),
                                    2: (300, {"colour": 0.25, "shape": 0.25}, 800, 2e12, 9.0, [0.2, 0.2])},
             method="tfs")
    for ablate, acc in ((("pim3",), 0.5), (("gas", "pim3", "st"), 0.25), (("pim1",), 0.125)):
        make_run(tmp_path, "ablate-" + "-".join(ablate),
                 {1: step1, 2: (1200, {"colour": acc, "shape": acc}, 800, 1e13, 30.0, [0.3, 0.3])}, ablate=ablate)
    for cand, params, acc in ((0, 1000, 0.25), (1, 1100, 0.5), (6, 1700, 0.125)):
        make_run(tmp_path, f"grow-{cand}", {1: step1, 2: (params, {"colour": acc, "shape": 0.5}, 800, 1e13, 30.0,
                                                           [0.3, 0.3])}, candidate=cand)
    (tmp_path / "_step1").mkdir()   # a helper folder: not a run of the report
    _write(tmp_path / "_step1" / "method.json", {"method": "growclip", "ablate": [], "candidate": None})

    assert is_comparison(tmp_path) and not is_comparison(tmp_path / "growclip")
    runs = load_runs(tmp_path)
    assert [r.name for r in runs if r.is_method_run] == ["growclip", "tfs", "tfs-half"]   # RECIPES order
    # Table 5: paper order (full, -pim3, -gas-pim3-st), then other combinations; marks per component
    t5 = table5(runs)
    names = [line.split("|")[5].strip() for line in t5 if line.startswith("| ✓") or line.startswith("| ✗")]
    assert names == ["growclip", "ablate-pim3", "ablate-gas-pim3-st", "ablate-pim1"]
    assert _row(t5, "✓")[:4] == ["✓"] * 4
    assert [c for c in t5 if "ablate-gas-pim3-st" in c][0].startswith("| ✓ | ✗ | ✗ | ✗ |")
    assert _row(t5, "✓")[6] == "62.5"          # growclip's mean top-1 at step 2: (0.5 + 0.75) / 2
    assert _row(t5, "✓")[7] == "40.0"          # mean of i2t 0.5 and t2i 0.3 R@1
    # Table 9: deltas against candidate 0
    t9 = table9(runs)
    assert _row(t9, "img_blocks")[1:4] == ["1", "+100", "+12.5"]     # (0.5+0.5)/2 - (0.25+0.5)/2
    assert _row(t9, "img_heads + img_conv_layers")[1:6] == ["6", "+700", "-6.2", "-12.5", "+0.0"]
    # Table 1: the TFS runs at each data fraction (no manifest here: columns are steps)
    t1 = table1(runs)
    assert _row(t1, "tfs")[1:] == ["1,000", "37.5", "43.8"] and _row(t1, "tfs-half")[1:] == ["300", "50.0", "25.0"]
    # TiC summary: E = [[.2, .1], [.3, .4]]: diagonal (.2+.4)/2, lower .3, upper .1; and the cost of step 2 summed over its phases
    tic = tic_summary(runs)
    assert _row(tic, "growclip")[1:] == ["30.0", "30.0", "10.0", "800", "10.000", "30"]
    md = write_comparison(tmp_path).read_text()
    assert (tmp_path / "comparison_methods.png").stat().st_size > 1000
    assert (tmp_path / "comparison_table1.png").exists()
    top = _row(md.splitlines(), "growclip")
    assert top[1:3] == ["37.5 (1.0k)", "62.5 (1.5k)"] and top[3:] == ["800", "10.000", "30"]
    assert not re.search(r"\| _step1 \|", md)


def test_reproduce_plan_matches_the_tables():
    """benchmarks/reproduce.py makes exactly the runs the tables read: Table 5's ablation sets, one
    candidate per growth factor (bit k) plus candidate 0, a TFS run at half depth and width; a run
    reuses only phases upstream of what it switches off."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.reproduce import plan
    from growclip_train.presets import load_config
    from growclip_train.compare import TABLE5
    from growclip_train.step_phases import phases_before

    cfg = load_config("demo")
    runs = {r.name: r for r in plan(cfg, ["growclip", "tfs", "lwf"], 4, {"1", "5", "9"}, ["pim"])}
    ablations = [tuple(sorted(r.args[1].split(","))) for r in runs.values() if r.args[:1] == ("--ablate",)]
    assert ablations == list(TABLE5[1:])
    cands = sorted(int(r.args[1]) for r in runs.values() if r.args[:1] == ("--candidate",))
    assert cands == [0, 1, 2, 4, 8, 16, 32]
    # both inheritance modes: a growclip run each; preserve skips the Table 5 rows equal to another run
    # (PIM@3 off: preserve's PIM@3 is already exact slicing; everything off: plain inheritance in either)
    both = {r.name: r for r in plan(cfg, ["growclip"], 4, {"5", "9"}, ["preserve", "pim"])}
    assert both["growclip-preserve"].sets == ("growth.inherit=preserve",) and "growclip" not in both
    pres = sorted(n for n in both if n.startswith("ablate-") and n.endswith("-preserve"))
    assert pres == ["ablate-gas-pim3-preserve", "ablate-st-gas-pim3-preserve"]
    assert all(both[n].share_from == "growclip-preserve" for n in pres)
    assert both["grow-img_heads"].share_from == "growclip-preserve"     # Table 9 follows the first mode
    assert "tfs-half" not in both
    half = dict(s.split("=") for s in runs["tfs-half"].sets)
    assert (half["arch.img_blocks"], half["arch.img_heads"], half["arch.embed_dim"]) == \
        (str(cfg.arch.img_blocks // 2), str(cfg.arch.img_heads // 2), str(cfg.arch.embed_dim // 2))
    assert runs["lwf"].steps == (2, 3, 4) and runs["tfs-half"].steps == (1, 2, 3, 4)
    assert phases_before({"pim3"}) == ("pim1", "supernet", "sample", "gas")
    assert phases_before({"st", "gas", "pim3"}) == ("pim1",) and phases_before({"pim1"}) == ()


def test_a_resumed_comparison_adds_its_work_and_keeps_every_command():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.reproduce import merged_record, record_commands

    first = {"command": "reproduce.py --methods twp", "overrides": ["a=1"], "steps_run": 3, "wall_min": 2.0}
    more = {"command": "reproduce.py --methods tfs", "overrides": ["a=1"], "steps_run": 2, "wall_min": 1.5}
    rec = merged_record(first, more)
    assert (rec["command"], rec["later_commands"]) == (first["command"], [more["command"]])
    assert (rec["steps_run"], rec["wall_min"], rec["invocations"]) == (5, 3.5, 2)
    again = merged_record(rec, {**more, "steps_run": 1, "wall_min": 0.5})     # the same command resumed
    assert again["later_commands"] == [more["command"]] and (again["steps_run"], again["invocations"]) == (6, 3)
    assert "later_commands" not in merged_record(first, {**first, "steps_run": 1, "wall_min": 1.0})
    other = {**more, "overrides": ["a=2"]}     # other settings: counted apart, the earlier records kept
    assert merged_record(rec, other) == {**other, "earlier": [rec]}
    assert merged_record(merged_record(rec, other), first)["earlier"] == [rec, other]
    assert record_commands(merged_record(rec, other)) == [first["command"], more["command"], more["command"]]


def test_kept_and_table5_per_inheritance_mode(tmp_path):
    """A growclip run per mode: Table 5 splits by growth.inherit (plain-inheritance rows in both), and
    the kept figures of pim1/pim3 appear per run."""
    from growclip_train.compare import kept_summary

    step1 = (1000, {"colour": 0.25, "shape": 0.5}, 400, 4e12, 10.0, [0.2, 0.1])
    runs_made = (("growclip-preserve", "preserve", (), 0.75),
                 ("ablate-gas-pim3-preserve", "preserve", ("gas", "pim3"), 0.5),
                 ("growclip-pim", "pim", (), 0.25), ("ablate-pim1-pim", "pim", ("pim1",), 0.125))
    for name, mode, ablate, acc in runs_made:
        make_run(tmp_path, name, {1: step1, 2: (1200, {"colour": acc, "shape": acc}, 800, 1e13, 30.0, [0.3, 0.3])},
                 ablate=ablate)
        _write(tmp_path / name / "step2" / "config.json", {"growth": {"inherit": mode}})
    _write(tmp_path / "growclip-preserve" / "step2" / "pim1" / "done.json",
           {"inherit": "preserve", "kept": {"old": {"loss": 2.5, "top1": 0.4}, "grown": {"loss": 2.5004, "top1": 0.4}}})
    runs = load_runs(tmp_path)
    assert {r.name: r.inherit for r in runs}["growclip-preserve"] == "preserve"
    t5 = table5(runs)
    pim_part, pres_part = "\n".join(t5).split("growth.inherit=preserve")
    assert "ablate-pim1-pim" in pim_part and "ablate-pim1-pim" in pres_part      # plain inheritance: both
    assert "growclip-preserve" not in pim_part and "growclip-pim" not in pres_part
    assert _row(pres_part.splitlines(), "✓")[4:6] == ["growclip-preserve", "1,200"]
    k = kept_summary(runs)
    assert _row(k, "growclip-preserve") == ["growclip-preserve", "2", "pim1", "preserve", "2.500 -> 2.500",
                                            "40.0 -> 40.0"]
