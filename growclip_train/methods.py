"""Every method is a recipe on the one trainer: where step t starts from, what data it reads and how
many samples it trains on (docs/method.md sections 6-7). Run one with

    deepspeed --num_accelerators 2 launchers/grow.py --method cumulative-exp --step 3 --config demo

Step 1 is the same for every method (the configured architecture from scratch on D^1, ``train.epochs``
passes). From step 2 on, with C = ``method.step_samples`` (default ``train.epochs`` x N^1, the cost of
step 1; TiC-CLIP's per-step budget):

| method | start of step t | data | samples |
|---|---|---|---|
| growclip | PIM from step t-1, supernet, GAS, PIM (phases.py) | D^t | ``train.epochs``-style phases over D^t |
| nas | the same phases with every init fresh (one-shot NAS from scratch) | D^t | as growclip |
| tfs | fresh, fixed architecture | D^t | ``train.epochs`` x N^t |
| twp | step t-1's weights | D^t | ``train.epochs`` x N^t |
| sap | shrink and perturb: ``sap_shrink`` x w + ``sap_noise`` x w_rand | D^t | ``train.epochs`` x N^t |
| oracle | fresh | D^t | t x C |
| cumulative-all | step t-1's weights | D^t | C |
| cumulative-exp / -equal | step t-1's weights | step t + a buffer of ``buffer_size`` old samples | C |
| sequential | step t-1's weights | step t | C |
| restart | fresh | D^t | C |
| lwf | step t-1's weights, + ``lwf_weight`` x KL to the frozen step t-1 model | step t | C |
| patching | the patched model of step t-1 | step t | C, then interpolation |

NAS gets GrowCLIP's per-step budget so that the two compare at equal cost (the paper's NAS trains a
30-epoch supernet and then the chosen net 30 epochs, twice GrowCLIP's). Warm-up: from scratch the
full ``train.warmup_steps``; GrowCLIP's phases and the paper's warm-started baselines (TWP, SAP) the
short re-warm-up of ``train/schedule.py: warmup_for``; TiC-CLIP's warm-started methods none (TiC-CLIP's
finding). Every method keeps the same peak lr.
With equal-size steps, tfs and oracle are the same run (t x C on D^t).

``train.match=flops`` replaces every budget above by one FLOP budget per step, F_t (train/budget.py):
each method spends what TFS of the configured architecture spends on D^t, as samples of its own model.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from growclip_ds import model_folder
from growclip_ds.config import ConfigError
from growclip_train.config import RunConfig
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.mixture import replay_mixture
from growclip_ds.distributed import rank_world
from growclip_ds.growth.pim import pim
from growclip_ds.model.init import name_seed
from growclip_train.rundir import RunDir
from growclip_train.train.budget import step_flops
from growclip_train.train.trainer import Phase
from growclip_train.log import log


class Init(str, Enum):
    """Where step t >= 2 starts from."""
    GROW = "grow"            # GrowCLIP's phases (phases.py): PIM, supernet, GAS, PIM
    NAS = "nas"              # the same phases, every init fresh
    SCRATCH = "scratch"      # a fresh model of the configured architecture
    PREVIOUS = "previous"    # step t-1's weights
    SAP = "sap"              # shrink and perturb step t-1's weights


class Budget(str, Enum):
    """How many samples step t >= 2 trains on."""
    EPOCHS = "epochs"        # train.epochs passes over the data
    C = "C"                  # TiC-CLIP's per-step budget
    T_C = "tC"               # t x C


@dataclass(frozen=True)
class Recipe:
    name: str
    init: Init
    data: str = "all"        # all (D^t) | new (step t) | exp | equal (replay buffers: data/mixture.py)
    budget: Budget = Budget.EPOCHS
    distill: bool = False    # LwF
    patch: bool = False      # Patching: interpolate with the previous patched model after training
    paper_baseline: bool = False   # GrowCLIP's own baselines train with its recipe (warm-up rules)

    @property
    def grows(self) -> bool:
        """Runs GrowCLIP's growth phases (supernet, sample, GAS, final) rather than one ``train``."""
        return self.init in (Init.GROW, Init.NAS)

    @property
    def warmup(self) -> str:
        """From scratch: the full warm-up; the paper's warm-started baselines (TWP, SAP): the short
        re-warm-up of GrowCLIP's inherited phases; TiC-CLIP's warm-started methods: none."""
        if self.init in (Init.SCRATCH, Init.NAS):
            return "scratch"
        return "inherited" if self.paper_baseline or self.init == Init.GROW else "none"


RECIPES = {r.name: r for r in (
    Recipe("growclip", Init.GROW), Recipe("nas", Init.NAS),
    Recipe("tfs", Init.SCRATCH, paper_baseline=True), Recipe("twp", Init.PREVIOUS, paper_baseline=True),
    Recipe("sap", Init.SAP, paper_baseline=True),
    Recipe("oracle", Init.SCRATCH, budget=Budget.T_C),
    Recipe("cumulative-all", Init.PREVIOUS, budget=Budget.C),
    Recipe("cumulative-exp", Init.PREVIOUS, "exp", Budget.C), Recipe("cumulative-equal", Init.PREVIOUS, "equal", Budget.C),
    Recipe("sequential", Init.PREVIOUS, "new", Budget.C), Recipe("restart", Init.SCRATCH, budget=Budget.C),
    Recipe("lwf", Init.PREVIOUS, "new", Budget.C, distill=True),
    Recipe("patching", Init.PREVIOUS, "new", Budget.C, patch=True),
)}


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"--method: unknown method {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def step_budget_c(cfg: RunConfig, manifest: Manifest) -> int:
    """C in samples: ``method.step_samples`` or the cost of step 1 (``train.epochs`` x N^1)."""
    return cfg.method.step_samples or round(cfg.train.epochs * manifest.num_samples([1]))


def sap_init(cfg: RunConfig, prev_state: dict, arch, step: int) -> dict:
    """Shrink and perturb (Ash & Adams 2020): every tensor w -> shrink * w + noise * w_rand, w_rand a
    fresh draw of its initializer (the PIM rule on an unchanged architecture); logit_scale as PIM."""
    m = cfg.method
    seed = name_seed(cfg.train.seed, f"sap/t{step}") % (2 ** 31)
    return pim(prev_state, arch, arch, m.sap_shrink, m.sap_noise, seed, cfg.growth.copy_logit_scale, "all")


def baseline_phase(cfg: RunConfig, recipe: Recipe, step: int, run: RunDir) -> Phase:
    """The single training phase of a non-growing method at step t >= 2."""
    manifest = Manifest.load(cfg.data.root)
    prev_state, arch = model_folder.read_model(run.step(step - 1).path)
    init = {Init.SCRATCH: None, Init.PREVIOUS: prev_state}.get(recipe.init)
    if recipe.init == Init.SAP:
        init = model_folder.shared_state(run.step(step).phase("sap").path,
                                       lambda: (sap_init(cfg, prev_state, arch, step), arch))
    if recipe.init == Init.SCRATCH:
        arch = cfg.arch
    c = step_budget_c(cfg, manifest)
    budget = {Budget.EPOCHS: None, Budget.C: c, Budget.T_C: step * c}[recipe.budget]
    m = cfg.method
    sizes = {j: manifest.num_samples([j]) for j in range(1, step + 1)}
    mixture = replay_mixture(recipe.data, step, sizes, m.buffer_size, m.new_data_weight)
    flops = step_flops(cfg, manifest.num_samples(step)) if cfg.train.match == "flops" else None
    return Phase("train", step, arch, data_steps=[j for src in mixture for j in src.steps], init_state=init,
                 mixture=mixture, num_samples=None if flops else budget, flops_budget=flops, warmup=recipe.warmup,
                 teacher=(prev_state, arch) if recipe.distill else None,
                 distill_weight=m.lwf_weight if recipe.distill else 0.0)


def interpolate(old: dict, new: dict, alpha: float) -> dict:
    """Weight interpolation (Ilharco et al. 2022): (1 - alpha) * old + alpha * new, tensor by tensor."""
    if old.keys() != new.keys():
        raise ValueError(f"patching needs one architecture: tensors differ ({sorted(old.keys() ^ new.keys())[:3]})")
    return {k: (1 - alpha) * old[k].float() + alpha * new[k].float() for k in new}


def patch_step(cfg: RunConfig, step: int, run: RunDir, progress: bool = True) -> tuple[dict, dict]:
    """Patching's step output: the interpolation of the previous patched model and this step's
    trained one whose alpha scores best on the selection retrieval sets of the old steps (< t,
    ``method.patch_select="old"``) or of all seen steps (<= t, "seen"). Returns (state, record)."""
    from growclip_train.step_eval import evaluator

    old, arch = model_folder.read_model(run.step(step - 1).path)
    new, _ = model_folder.read_model(run.step(step).phase("train").path)
    score = evaluator(cfg, arch, role="selection", kinds=("retrieval",))
    last = step - 1 if cfg.method.patch_select == "old" else step
    scores = {}
    for alpha in cfg.method.alphas():
        by_step = score(interpolate(old, new, alpha))["retrieval_by_step"]
        scores[alpha] = sum(by_step[str(j)]["mean_R@1"] for j in range(1, last + 1)) / last
        if progress and rank_world()[0] == 0:
            log.info(f"patching step {step}: alpha={alpha} mean R@1 on steps 1..{last} = "
                     f"{scores[alpha]:.4f}")
    best = max(scores, key=lambda a: (scores[a], a))
    return interpolate(old, new, best), {"alpha": best, "scores": {str(a): s for a, s in scores.items()}}


def record(run: RunDir, method: str, ablate: set, candidate: int | None, writer: bool = True) -> None:
    """What made this run folder (before any process group: ``writer`` writes, no one waits); a
    folder holds one method."""
    want = {"method": method, "ablate": sorted(ablate), "candidate": candidate}
    if run.is_run():
        have = run.read_method()
        if have != want:
            raise ConfigError(f"{run} was made by {have}; this command asks for {want}. "
                              "Use another --run-dir for another method")
        return
    if writer:
        run.write_method(want)

