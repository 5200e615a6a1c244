"""The inputs of growth step t >= 2 and its two growths: PIM@1 (step t-1 model -> supernet) and PIM@3
(the chosen candidate inside the trained supernet -> the chosen net), each computed once by rank 0,
loaded by every rank, and measured for what it kept (``kept.py``) the first time."""
from __future__ import annotations

import functools
import time

import torch

from growclip_ds import model_folder
from growclip_ds.config import ArchConfig
from growclip_train.config import RunConfig
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.tokenizer import load_tokenizer
from growclip_ds.distributed import rank_world
from growclip_train.accelerator import accelerator_device
from growclip_ds.factory import build
from growclip_ds.growth import space
from growclip_ds.growth.kept import describe as describe_kept, measure_kept
from growclip_ds.growth.pim import pim
from growclip_ds.growth.preserve import preserve
from growclip_ds.model.init import name_seed
from growclip_train.rundir import PIM1, PIM3, RunDir
from growclip_train.step_phases import SUPERNET_PHASES
from growclip_train.log import log


class GrowthStep:
    def __init__(self, cfg: RunConfig, step: int, run: RunDir, ablate: set, fresh: bool = False):
        self.cfg, self.t, self.run, self.ablate, self.fresh = cfg, step, run, ablate, fresh
        self.dir, self.prev = run.step(step), run.step(step - 1)
        self.prev_arch = model_folder.read_arch(self.prev.path)
        self.super_arch = space.supernet(self.prev_arch, cfg.growth)
        self.manifest = Manifest.load(cfg.data.root)
        self.n_prev, self.n_now = self.manifest.num_samples(step - 1), self.manifest.num_samples(step)

    @property
    def warmup(self) -> str:
        """Phases that start from inherited weights re-warm up briefly; NAS's fresh ones fully."""
        return "scratch" if self.fresh else "inherited"

    def pim_seed(self, tag: str) -> int:
        return name_seed(self.cfg.train.seed, f"pim/t{self.t}/{tag}") % (2 ** 31)

    def inheritance(self, which: str) -> dict:
        """How PIM@1 / PIM@3 inherits: the configured mode, or plain inheritance when ablated."""
        g = self.cfg.growth
        if which in self.ablate:
            return {"inherit": "plain", "beta": 1.0, "gamma": 0.0}
        if g.inherit == "preserve":
            return {"inherit": "preserve", "gamma": g.preserve_gamma}
        return {"inherit": "pim", "beta": g.beta, "gamma": g.gamma, "scope": g.pim_scope}

    def _grow(self, src_dir, src_arch: ArchConfig, dst: ArchConfig, which: str):
        sd, _ = model_folder.read_model(src_dir)
        how, seed = self.inheritance(which), self.pim_seed(which)
        if how["inherit"] == "preserve":
            return preserve(sd, src_arch, dst, seed, how["gamma"]), dst
        g = self.cfg.growth
        return pim(sd, src_arch, dst, how["beta"], how["gamma"], seed, g.copy_logit_scale, g.pim_scope), dst

    def grown_init(self, which: str, src_dir, src_arch: ArchConfig, dst: ArchConfig) -> dict:
        """PIM@1 / PIM@3's output, computed once by rank 0 and loaded by every rank; the first time,
        what it keeps of the source is measured and recorded as the growth's done record."""
        folder = self.dir.phase(which)
        state = model_folder.shared_state(folder.path, lambda: self._grow(src_dir, src_arch, dst, which))
        flag = [folder.finished if rank_world()[0] == 0 else None]
        if rank_world()[1] > 1:
            torch.distributed.broadcast_object_list(flag, src=0)
        if not flag[0]:
            t0 = time.time()
            old = build(model_folder.read_model(src_dir)[0], src_arch, accelerator_device())
            old.set_arch(dst if which == PIM3 else src_arch)   # PIM@3: the choice as it was inside the supernet
            kept = measure_kept(old, build(state, dst, accelerator_device()), self.fixed_batch(), self.selection_sets(),
                                self.tok)
            if rank_world()[0] == 0:
                log.info(f"step {self.t} {which} ({self.inheritance(which)['inherit']}): "
                         f"{describe_kept(kept)}")
            folder.mark_done({**self.inheritance(which), "kept": kept, "wall_s": time.time() - t0})
        return state

    @functools.cached_property
    def tok(self):
        return load_tokenizer(self.cfg, self.super_arch)

    def selection_sets(self):
        from growclip_ds.eval.evaluate import selection_sets

        return selection_sets(self.cfg.data, self.super_arch.image_size)

    def fixed_batch(self) -> dict:
        """The first min(global batch, 256) samples of step t's new data in shard order (training data
        of this step that the step t-1 model has not seen): what growth is scored on."""
        from growclip_ds.data.loader import first_samples

        m = self.manifest
        return first_samples([e.path for e in m.shards([self.t])], min(self.cfg.train.global_batch, 256),
                             self.super_arch.image_size, self.tok, exclude=m.holdout)

    def supernet_init(self) -> dict | None:
        """PIM@1: the step t-1 model grown into the supernet (NAS: none, a fresh init)."""
        if self.fresh:
            return None
        return self.grown_init(PIM1, self.prev.path, self.prev_arch, self.super_arch)

    def latest_supernet_dir(self):
        """The most trained supernet so far: after sampling, after fine-tuning, or PIM@1's output."""
        for phase in reversed(SUPERNET_PHASES):
            if self.dir.phase(phase).finished:
                return self.dir.phase(phase).path
        if self.fresh:
            raise RuntimeError(f"{self.dir.path}: NAS has no trained supernet yet; run its supernet phase first")
        self.supernet_init()
        return self.dir.phase(PIM1).path

    def latest_supernet(self) -> dict:
        return model_folder.read_model(self.latest_supernet_dir())[0]

    def sampler(self, check_every: int):
        from growclip_ds.growth.sampling import SubnetSampler

        return SubnetSampler(self.prev_arch, self.cfg.growth, self.cfg.train.seed, self.t, "sample", check_every)

    def choice(self) -> ArchConfig:
        d = self.dir.read_choice()
        return model_folder.arch_from_record(d, str(self.dir.choice_file))
