"""CPU training speed of the ``quick`` profile's training steps (issue 19, item 4): today's eager step against
``channels_last``, ``torch.compile`` (inductor, default mode), both, and the thread count, measured in one run.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_train_speed.py [--tasks ddpm,classifier,saliency,wargnier]
        [--variants eager,eager-2t,cl,compile,compile-cl] [--rounds 3] [--block 3] [--check-steps 20] [--quick]

Tasks (the networks built as the methods build them for ``quick`` on synth-tumor: 4 channels, 64 x 64 slices):

- ``ddpm``: ``wolleb``'s DDPM step (``training.train_denoiser``'s body: q_sample at t ~ U{0..500}, class-
  conditional ``DiffusionModelUNet`` widths (8, 16, 32) without attention, epsilon-MSE, backward, AdamW),
  batch 32;
- ``classifier``: ``wolleb``'s noise-conditioned classifier step (``train_classifier``, first order:
  ``DiffusionModelEncoder`` widths (16, 32, 64), attention on the lowest level, cross-entropy on x_t, AdamW
  weight decay 0.05), batch 32;
- ``saliency``: the ``saliency`` classifier step (``LogitMapClassifier`` (8, 16, 32, 64), BCE on the mean
  logit, Adam lr 2e-3), batch 16;
- ``wargnier``: the same with ``wargnier``'s constraint (lambda 0.1, capped share, rms-scaled BCE on the
  gradient attribution of the healthy half of a balanced batch: a double backward), eager only (context:
  torch.compile cannot compile double backward).

Variants: ``eager`` (fp32, the baseline, 1 thread), ``eager-2t`` (the same at ``torch.set_num_threads(2)``),
``cl`` (model and inputs ``channels_last``), ``compile`` (``torch.compile`` of the loss function: q_sample,
the network's forward and the loss, whose backward AOTAutograd compiles too; the optimizer step stays eager),
``compile-cl`` (both). ``set_num_interop_threads`` is not measured: a training step is one chain of ops,
inter-op parallelism does not apply (and it can only be set once, before any parallel work).

Method: every variant trains its own copy of the same initial weights on the same batches (step k's batch,
t and noise are a function of k alone), so the loss curves are comparable: "max |dloss|" is the largest
difference from the eager curve over the first ``--check-steps`` steps (``eager-2t`` shows the size of
fp32 reduction-order noise). Compile variants first run their first step alone (timed: the compile), then all
variants run ``--rounds`` blocks of ``--block`` steps in rotating order, so that load on a shared machine hits
them alike; the step time is the median over blocks of each block's mean. "compile s" is the first steps'
time minus that many steady steps; "pays off after" = compile s / (eager step - variant step). Inductor's
cache goes to a fresh temporary directory (a cold compile, as the first cell on a new machine sees it).
Random smooth images inside a disc (background -1 for wolleb, 0 for wargnier), not a dataset: speed does not
depend on the pixels.

Record: AMD EPYC, 2 cores, loaded throughout by one other 1-thread job (load average 3-4 during the last two
runs), torch 2.13.0+cpu, MONAI 1.6.1, cold inductor cache; ``--quick`` (3 blocks of 2 steps, 10 check steps),
so the ratios carry ~+-10 % load noise (see the block spread). Three runs, each against its own eager baseline:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_train_speed.py --tasks ddpm --quick        (420 s)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_train_speed.py --tasks classifier --quick  (274 s)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_train_speed.py --tasks saliency,wargnier --quick

    task       variant     s/step (min-max block) x eager compile s pays off after max |dloss| (10 steps)
    ddpm       eager        0.891  0.704-0.895     1.00                              0
    ddpm       eager-2t     4.034  3.651-10.249    0.22                              1.2e-07
    ddpm       cl           0.877  0.847-0.915     1.02                              1.8e-07
    ddpm       compile      0.873  0.824-0.888     1.02     154.3     8441 steps     4.8e-07
    ddpm       compile-cl   0.822  0.802-0.847     1.08     170.6     2487 steps     6.0e-07
    classifier eager        0.480  0.409-0.506     1.00                              0
    classifier cl           0.405  0.396-0.477     1.19                              7.7e-04
    classifier compile      0.420  0.403-0.448     1.14     104.6     1722 steps     8.2e-05
    classifier compile-cl   0.427  0.423-0.428     1.12     112.7     2123 steps     8.3e-05
    classifier eager-2t     1.818  1.766-5.085     0.26                              6.0e-07
    saliency   eager        0.058  0.056-0.071     1.00                              0
    saliency   eager-2t     1.689  1.593-1.693     0.03                              1.2e-07
    saliency   cl           0.049  0.041-0.050     1.19                              6.0e-08
    saliency   compile      0.042  0.042-0.043     1.39      34.9     2127 steps     1.2e-07
    saliency   compile-cl   0.042  0.042-0.045     1.37      28.2     1816 steps     1.2e-07
    wargnier   eager        0.092  0.089-0.143     1.00                              0
    wargnier   eager-2t     0.524  0.342-0.882     0.18                              9.5e-07
    wargnier   cl           0.079  0.077-0.141     1.17                              6.0e-08

The DDPM and saliency/wargnier runs predate the per-step reseeding and ``fallback_random`` (neither network has
dropout, so neither changes them). The default (3 blocks of 3 steps, 20 check steps, all tasks) should take
~15 min on this machine, most of it the four cold compiles; ``--quick`` ~12 min, ``--tasks``/``--variants`` less.
(An earlier saliency/wargnier run, less loaded: saliency cl 1.31, compile 1.32 at 32.6 s compile; wargnier
eager-2t 1.34, cl 1.22: ``eager-2t`` depends entirely on what the other core is doing.)

Reading: no variant reaches 1.3x on wolleb's steps (DDPM 1.02-1.08, classifier 1.12-1.19). A cold compile
costs 105-170 s per network on one core, more than it can save in ``quick``'s 250 steps of each (at most
~0.07 s a step: < 20 s), so it never pays inside a 5-minute cell (it would pay after 1700-8400 steps).
saliency's step compiles to 1.37-1.39x, but 28-35 s of compile pay off only after ~1800-2100 steps, more than
``quick``'s 800. ``channels_last`` costs nothing and matches eager (1e-7, the classifier's 8e-4 after 10 steps is
fp32 reduction-order noise amplified by training), but gives 1.0-1.3x only (saliency/wargnier/classifier
~1.2x, DDPM ~1.0x). Two threads beside a busy core are 3-30x slower (OpenMP threads wait on the preempted
one): keep one thread per job on a shared 2-core machine. Nothing is adopted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

# a cold, private inductor cache and single-process compilation (set before torch is imported)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_train_speed_inductor_"))
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch._inductor.utils import fresh_cache  # noqa: E402

# compiled dropout (the noise-conditioned classifier's head) draws from the eager RNG, so that its masks, and the
# loss curves, match eager's; without it inductor's own philox RNG gives other masks
torch._inductor.config.fallback_random = True

TASKS = ("ddpm", "classifier", "saliency", "wargnier")
VARIANTS = ("eager", "eager-2t", "cl", "compile", "compile-cl")
EAGER_ONLY = {"wargnier"}
CHANNELS, SIZE, POOL = 4, 64, 256
FIRST_STEPS = 3  # steps run alone before the timed blocks (a compile variant compiles in them)


def images(seed: int, background: float) -> tuple[torch.Tensor, torch.Tensor]:
    """POOL smooth random 4-channel 64 x 64 slices inside a disc, and balanced labels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(POOL, CHANNELS, 8, 8, generator=g)
    x = torch.tanh(F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    disc = (xx ** 2 + yy ** 2 < 0.8).float()
    if background == 0.0:
        x = (x + 1) / 2 * disc + 1e-3 * disc  # [0, 1], zero outside the brain only
    else:
        x = x * disc + background * (1 - disc)
    labels = (torch.arange(POOL) % 2).long()
    return x, labels


class Task:
    """One training step's pieces: build(variant) -> (module computing the loss, optimizer); batch(k)."""

    batch_size = 32

    def __init__(self, name: str):
        self.name = name

    def batch(self, k: int) -> tuple:
        raise NotImplementedError

    def build(self):
        raise NotImplementedError


class StepLoss(nn.Module):
    """q_sample, the network and its loss in one module (what torch.compile compiles): the DDPM's epsilon-MSE, or the
    noise-conditioned classifier's cross-entropy."""

    def __init__(self, net, alphas_cumprod, classifier: bool):
        super().__init__()
        self.net, self.classifier = net, classifier
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def forward(self, x0, t, noise, y):
        from lesionbench.methods.diffusion.sampling import q_sample

        x_t = q_sample(x0, t, noise, self.alphas_cumprod)
        if self.classifier:
            return F.cross_entropy(self.net(x_t, t).float(), y)
        return F.mse_loss(self.net(x_t, t, class_labels=y).float(), noise)


class SaliencyLoss(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y, brain=None):  # brain: used by the constraint only
        from lesionbench.methods.wargnier import attribution as attr

        return attr.classification_loss(self.net.lesion_logit(x), y)


class WollebTask(Task):
    def __init__(self, name: str):
        super().__init__(name)
        from lesionbench.methods.wolleb.method import Wolleb, WollebConfig
        from lesionbench.methods.diffusion.sampling import linear_schedule

        self.c = WollebConfig(**Wolleb.profiles["quick"])
        _, self.alphas_cumprod = linear_schedule(self.c.timesteps)
        self.x, self.labels = images(0, -1.0)
        if name == "ddpm":
            self.batch_size, self.lr, self.wd, self.max_t = self.c.batch_size, self.c.lr, 0.0, self.c.train_max_t
        else:
            self.batch_size, self.lr, self.wd, self.max_t = (self.c.classifier_batch_size, self.c.classifier_lr, 0.05,
                                                             self.c.classifier_max_t)

    def batch(self, k: int):
        g = torch.Generator().manual_seed(1000 + k)
        index = torch.randperm(POOL, generator=g)[: self.batch_size]
        x0 = self.x[index]
        t = torch.randint(0, self.max_t + 1, (self.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return x0, t, noise, self.labels[index]

    def build(self):
        from lesionbench.methods.diffusion.networks import diffusion_unet, noise_conditioned_classifier

        c = self.c
        torch.manual_seed(0)
        if self.name == "ddpm":
            net = diffusion_unet(CHANNELS, c.widths, c.res_blocks, c.attention, c.norm_groups, c.learn_sigma, 2)
            module = StepLoss(net, self.alphas_cumprod, classifier=False)
        else:
            net = noise_conditioned_classifier(CHANNELS, (SIZE, SIZE), c.classifier_widths, c.classifier_res_blocks,
                                               c.classifier_attention, c.norm_groups)
            module = StepLoss(net, self.alphas_cumprod, classifier=True)
        module.train()
        return module, torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.wd)


class WargnierTask(Task):
    def __init__(self, name: str):
        super().__init__(name)
        from lesionbench.methods.wargnier.method import Wargnier, WargnierConfig

        self.c = WargnierConfig(**Wargnier.profiles["quick"])
        self.batch_size = self.c.batch_size
        self.x, self.labels = images(1, 0.0)
        self.brain = self.x.abs().amax(dim=1) > 0

    def batch(self, k: int):
        g = torch.Generator().manual_seed(2000 + k)
        half = self.batch_size // 2  # balanced: half healthy (even indices), half lesion (odd)
        healthy = torch.randperm(POOL // 2, generator=g)[:half] * 2
        lesion = torch.randperm(POOL // 2, generator=g)[: self.batch_size - half] * 2 + 1
        index = torch.cat([healthy, lesion])
        return self.x[index], self.labels[index], self.brain[index]

    def build(self):
        from lesionbench.methods.wargnier.networks import LogitMapClassifier

        c = self.c
        torch.manual_seed(0)
        net = LogitMapClassifier(CHANNELS, tuple(c.widths), c.convs_per_stage, c.activation)
        module = SaliencyLoss(net).train()
        return module, torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)


def make_task(name: str) -> Task:
    return WollebTask(name) if name in ("ddpm", "classifier") else WargnierTask(name)


class Runner:
    """One variant of one task: its own copy of the network and optimizer, its own step counter and losses."""

    def __init__(self, task: Task, variant: str):
        self.task, self.variant = task, variant
        self.threads = 2 if variant.endswith("-2t") else 1
        self.channels_last = variant.endswith("-cl") or variant == "cl"
        self.module, self.optimizer = task.build()
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.loss_fn = torch.compile(self.module) if variant.startswith("compile") else self.module
        self.step_index, self.losses, self.step_times = 0, [], []

    def _inputs(self, k: int):
        batch = self.task.batch(k)
        if self.channels_last:
            batch = tuple(b.contiguous(memory_format=torch.channels_last) if b.dim() == 4 else b for b in batch)
        return batch

    def step(self) -> float:
        batch = self._inputs(self.step_index)  # the batch is built outside the timed region
        torch.manual_seed(self.step_index)  # the classifier's dropout: the same masks in every variant at step k
        torch.set_num_threads(self.threads)
        try:
            start = time.perf_counter()
            if self.task.name == "wargnier":
                loss = self._wargnier_step(*batch)
            else:
                loss = self.loss_fn(*batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            value = loss.item()
            elapsed = time.perf_counter() - start
        finally:
            torch.set_num_threads(1)
        self.losses.append(value)
        self.step_times.append(elapsed)
        self.step_index += 1
        return elapsed

    def _wargnier_step(self, x, labels, brain):
        from lesionbench.methods.wargnier import attribution as attr
        from lesionbench.regularisation import backward_with_gradient_share

        c, net = self.task.c, self.module.net
        loss, cls, constraint = attr.constrained_loss(net.lesion_logit, x, labels, brain, c.constraint_weight, c.constraint,
                                                      c.train_attribution, None, None, c.constraint_scale)
        self.optimizer.zero_grad(set_to_none=True)
        backward_with_gradient_share(cls, constraint if constraint.requires_grad else None, list(net.parameters()),
                                     c.constraint_weight)
        self.optimizer.step()
        return loss


def bench_task(name: str, variants: list[str], rounds: int, block: int, check_steps: int) -> list[dict]:
    task = make_task(name)
    if name in EAGER_ONLY:
        variants = [v for v in variants if not v.startswith("compile")]
    runners = {v: Runner(task, v) for v in variants}
    first = {}
    for v, r in runners.items():  # the first steps alone: for compile variants, the compile (each one cold)
        context = fresh_cache() if v.startswith("compile") else contextlib.nullcontext()
        with context:
            times = [r.step() for _ in range(FIRST_STEPS)]
        first[v] = sum(times)
        print(f"  {name:10s} {v:11s} first {FIRST_STEPS} steps " + " ".join(f"{s:.2f}" for s in times) + " s", flush=True)
    blocks = {v: [] for v in variants}
    for i in range(rounds):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            times = [runners[v].step() for _ in range(block)]
            blocks[v].append(sum(times) / len(times))
    # up to check_steps of every variant (the eager curve as the reference)
    for v, r in runners.items():
        while r.step_index < check_steps:
            r.step()
    base = statistics.median(blocks["eager"])
    rows = []
    for v, r in runners.items():
        step = statistics.median(blocks[v])
        compile_s = first[v] - FIRST_STEPS * step if v.startswith("compile") else float("nan")
        gain = base - step
        payoff = compile_s / gain if v.startswith("compile") and gain > 0 else float("nan")
        n = min(check_steps, len(r.losses), len(runners["eager"].losses))
        diff = max(abs(a - b) for a, b in zip(r.losses[:n], runners["eager"].losses[:n]))
        rows.append(dict(task=name, variant=v, step=step, spread=(min(blocks[v]), max(blocks[v])), ratio=base / step,
                         compile_s=compile_s, payoff=payoff, diff=diff, n=n,
                         loss0=r.losses[0], loss_n=r.losses[n - 1]))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3, help="timed blocks per variant (median over blocks)")
    parser.add_argument("--block", type=int, default=3, help="steps per timed block")
    parser.add_argument("--check-steps", type=int, default=20, help="steps of every variant compared with eager's losses")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps, 10 check steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.block, args.check_steps = 3, 2, 10
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "eager" not in variants:
        variants.insert(0, "eager")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown variants {bad}; choose from {VARIANTS}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}", flush=True)
    started = time.perf_counter()
    rows = []
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        rows += bench_task(name, variants, args.rounds, args.block, args.check_steps)
    print(f"\n{'task':10s} {'variant':11s} {'s/step':>7s} {'(min-max block)':>16s} {'x eager':>8s} {'compile s':>9s} "
          f"{'pays off after':>14s} {'max |dloss|':>11s} {'loss 1 -> n':>16s}")
    for r in rows:
        payoff = f"{r['payoff']:.0f} steps" if r["payoff"] == r["payoff"] else ("never" if r["variant"].startswith("compile") else "")
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] == r["compile_s"] else ""
        print(f"{r['task']:10s} {r['variant']:11s} {r['step']:7.3f} {r['spread'][0]:7.3f}-{r['spread'][1]:<7.3f} "
              f"{r['ratio']:8.2f} {compile_s:>9s} {payoff:>14s} {r['diff']:11.2e} "
              f"{r['loss0']:7.4f}->{r['loss_n']:.4f} ({r['n']})")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
