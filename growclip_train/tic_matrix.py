"""TiC-CLIP's evaluation matrix of one run: E[i][j] = the model of step i on the held-out retrieval
pairs of step j (mean of image->text and text->image R@1, the evaluation's ``retrieval_by_step``).

In-domain = mean of the diagonal, backward transfer = mean of the lower triangle (j < i, old data),
forward transfer = mean of the upper triangle (j > i, data not seen yet), as TiC-CLIP defines them.
"""
from __future__ import annotations

from growclip_train.rundir import RunDir


def eval_matrix(run_dir, metric: str = "mean_R@1") -> list[list[float]]:
    """Rows: the run's finished steps 1..n in order; columns: every growth step of the eval data."""
    run, rows = RunDir(run_dir), []
    for i in range(1, run.next_step()):
        by_step = run.step(i).read_eval()["retrieval_by_step"]
        rows.append([by_step[j][metric] for j in sorted(by_step, key=int)])
    return rows


def transfer_summary(matrix: list[list[float]]) -> dict:
    """In-domain, backward and forward transfer of an evaluation matrix (None where a part is empty)."""
    def mean(xs):
        return sum(xs) / len(xs) if xs else None
    cells = [(i, j, v) for i, row in enumerate(matrix) for j, v in enumerate(row)]
    return {"in_domain": mean([v for i, j, v in cells if i == j]),
            "backward": mean([v for i, j, v in cells if j < i]),
            "forward": mean([v for i, j, v in cells if j > i])}
