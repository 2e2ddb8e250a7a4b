"""Does the attribution constraint bind? ``wargnier`` against ``saliency`` (lambda = 0), measured in one run.

    python scripts/bench_constraint_binding.py [--seeds 0 1 2] [--steps 800] [--set key=value ...]
                                               [--arms saliency wargnier] [--threads 1] [--workdir DIR]

Trains each arm with the ``quick`` profile's network and schedule on synth-tumor (``quick`` data: 64 px,
split seed 0), selecting checkpoints on validation auprc as ``lesionbench run`` does, and prints per arm and seed:

- the constraint's gradient share ||lambda grad C|| / ||grad L_cls|| on the weights, measured on one fixed balanced
  training batch at initialisation and every 100 steps (the lambda and constraint of the wargnier arm, also for
  saliency's network: what the constraint would ask of it);
- ``train/constraint`` as logged, at a few steps;
- the fraction of brain entries (every channel) of healthy validation slices whose gradient attribution of the
  lesion logit is > 0 (the constraint asks for <= 0);
- slice AUROC on the validation slices (image labels; score: the method's own, sigmoid of the logit).
- at every validation checkpoint: validation auprc, A > 0 on healthy validation slices and slice AUROC (so that
  checkpoint-selection rules can be compared offline);
- on validation slices with lesions, A > 0 and mean A over lesion entries and over lesion-free brain entries
  (a diagnostic that reads validation masks, as the harness's validation scoring does; never training).
- validation voxel AUPRC of the kept checkpoint's map with the positive parts (the method's) and with the signed
  attribution (a diagnostic of what the positive-part convention discards).

Arms: ``saliency``, ``wargnier`` or ``wargnier:key=value:...`` (its own overrides, e.g.
``wargnier:constraint_scale=none:constraint_weighting=fixed:constraint_weight=1.0``, the authors' objective);
``--set`` overrides every arm. ``--network noise-conditioned`` trains wolleb-wargnier's guiding classifier instead
(arms ``wolleb-wargnier:key=value``). Results also go to ``--out`` as JSON lines.

Measured (issue 19; synth-tumor quick, split seed 0, 771 training slices, 199 validation; 1 thread on 2 cores
shared with other jobs). A > 0 and AUROC at the checkpoint chosen on validation auprc (in brackets: its step).

| arm | seed | grad share (logged; before: measured) | train/constraint | A > 0, healthy val | slice AUROC |
| --- | ---: | --- | --- | ---: | ---: |
| saliency | 0 / 1 / 2 | - | - | 0.729 / 0.502 / 0.501 | 0.820 / 0.772 / 0.799 |
| before: authors' scale, lambda 1 | 0 / 1 / 2 | 2e-6 to 1e-5 at init; 4e-4 to 0.05 at steps 100 / 400 / 800 | 0.6931-0.6976 | 0.512 / 0.696 / 0.686 | 0.796 / 0.828 / 0.852 |
| after: rms, capped 0.1 (default) | 0 / 1 / 2 | median 0.1, min 0.024-0.061 | 1.04 -> 0.35; 0.32 -> 0.80; 0.32 -> 0.77 | 0.500 [50] / 0.673 [700] / 0.500 [50] | 0.810 / 0.813 / 0.823 |
| rms, capped 0.5 | 0 / 1 / 2 | median 0.10 / 0.5 / 0.5 | 0.41 -> 0.33; 0.32 -> 0.32; 0.33 -> 0.34 | 0.006 [800] / 0.757 [100] / 0.753 [100] | 0.838 / 0.435 / 0.443 |
| saliency (every checkpoint) | 0 / 1 / 2 | - | - | 0.729 [750] / 0.750 [750] / 0.501 [100] | 0.820 / 0.783 / 0.798 |
| rms, capped 0.3, from step 400 (default since) | 0 / 1 / 2 | median 0.105 / 0.119 / 0.235 | 0.38 -> 0.33; 0.33 -> 0.33; 0.33 -> 0.33 | 0.006 [800] / 0.007 [800] / 0.010 [800] | 0.839 / 0.827 / 0.826 |

The last two rows: 1 thread, two other jobs on the 2 cores; validation auprc of the kept maps 0.516 / 0.387 / 0.439
(saliency, every checkpoint; 0.379 on seed 2 when kept from step 400) against 0.102 / 0.080 / 0.035 (wargnier): docs/calibration.md#wargnier-and-saliency.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lesionbench.methods.wargnier import attribution as attr
from lesionbench.methods.wargnier.method import Saliency, Wargnier
from lesionbench.streaming import in_memory


def fixed_batch(train, n: int = 16):
    """n/2 healthy and n/2 lesion training slices, the same for every arm and seed."""
    g = torch.Generator().manual_seed(1234)
    pick = [torch.nonzero(train.labels == k).flatten() for k in (0, 1)]
    index = torch.cat([p[torch.randperm(len(p), generator=g)[: n // 2]] for p in pick])
    return train.images[index].float(), train.labels[index], train.brain[index]


def constraint_terms(network, config, x, labels, brain):
    """(classification, constraint) of the wargnier arm's objective on (x, labels, brain)."""
    _, cls, constraint = attr.constrained_loss(network.lesion_logit, x, labels, brain, 1.0, config.constraint, "gradient",
                                               scale=config.constraint_scale)
    return cls, constraint


def gradient_share(network, config, batch) -> float:
    params = [p for p in network.parameters()]
    cls, constraint = constraint_terms(network, config, *batch)
    g_cls = torch.autograd.grad(cls, params, retain_graph=True, allow_unused=True)
    g_con = torch.autograd.grad(config.constraint_weight * constraint, params, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum(g.square().sum() for g in gs if g is not None)))  # noqa: E731
    return norm(g_con) / norm(g_cls)


def healthy_positive_fraction(network, val) -> tuple[float, float]:
    """(fraction of healthy brain entries with A > 0, median |A|) on the validation split."""
    healthy = val.labels == 0
    x, brain = val.images[healthy].float(), val.brain[healthy]
    positive = total = 0
    magnitudes = []
    for xs, bs in zip(x.split(64), brain.split(64)):
        a, _ = attr.gradient_attribution(network.lesion_logit, xs)
        values = a.permute(1, 0, 2, 3)[:, bs]
        positive += int((values > 0).sum())
        total += values.numel()
        magnitudes.append(values.abs().flatten())
    return positive / total, float(torch.cat(magnitudes).median())


def lesion_slice_attributions(network, val_cases) -> dict:
    """Where attributions fall on validation slices with lesions (a diagnostic: it reads validation masks, as the
    harness's validation scoring does): the fraction of lesion and of lesion-free brain entries (every channel) with
    gradient attribution A > 0, and the mean A over each, pooled over the validation cases' lesion slices."""
    sums = {"lesion": [0, 0, 0.0], "brain": [0, 0, 0.0]}  # positive, total, sum of A
    for case in val_cases:
        index = [int(i) for i in case.brain_slices if case.lesion[i].any()]
        if not index:
            continue
        x = torch.from_numpy(case.image[:, index].astype("float32")).permute(1, 0, 2, 3)
        a, _ = attr.gradient_attribution(network.lesion_logit, x)
        a = a.permute(1, 0, 2, 3)  # [C, N, H, W]
        lesion = torch.from_numpy(case.lesion[index])
        brain = torch.from_numpy(case.brain[index]) & ~lesion
        for name, where in (("lesion", lesion), ("brain", brain)):
            values = a[:, where]
            sums[name][0] += int((values > 0).sum())
            sums[name][1] += values.numel()
            sums[name][2] += float(values.sum())
    return {f"{name}_A_positive": p / t if t else float("nan") for name, (p, t, _) in sums.items()} | \
           {f"{name}_A_mean": s / t if t else float("nan") for name, (_, t, s) in sums.items()}


def map_auprc(method, val_cases) -> dict:
    """Pooled voxel AUPRC over the validation cases' brain voxels (a diagnostic; validation masks) of the method's
    map attribution reduced two ways: the method's own (positive parts, the paper's) and the signed channel sum
    (ours: keeps the ranking among entries whose attributions are all negative)."""
    from sklearn.metrics import average_precision_score

    kind = method.config.map_attributions[0]
    scores = {"positive": [], "signed": []}
    truth = []
    for case in val_cases:
        index = [int(i) for i in case.brain_slices]
        x = torch.from_numpy(case.image[:, index].astype("float32")).permute(1, 0, 2, 3)
        brain = torch.from_numpy(case.brain[index])
        a = torch.cat([method._attribution(kind, xs).detach() for xs in x.split(64)])
        scores["positive"].append(attr.anomaly_map(a, method.config.map_channels)[brain])
        scores["signed"].append(a.sum(dim=1)[brain])
        truth.append(torch.from_numpy(case.lesion[index])[brain])
    y = torch.cat(truth).numpy()
    return {f"val_auprc_{k}": float(average_precision_score(y, torch.cat(v).numpy())) for k, v in scores.items()}


def slice_auroc(method, val) -> float:
    from sklearn.metrics import roc_auc_score

    scores = torch.cat([method.predict(x).scores for x in val.images.split(64)])
    return float(roc_auc_score(val.labels.numpy(), scores.numpy()))


def noise_conditioned(args, dataset, train, val, parse) -> None:
    """wolleb-wargnier's guiding classifier (quick network and schedule) per arm: lambda = 0 (wolleb's plain
    classifier) and the given configs; share logged during training, A > 0 on healthy validation slices at
    t = 0 and at t ~ U{0..L}, slice AUROC of p(lesion | x, t = 0)."""
    from lesionbench.methods.diffusion.sampling import q_sample
    from lesionbench.methods.diffusion.training import Schedule
    from lesionbench.methods.wolleb_wargnier.method import WollebWargnier
    from lesionbench.fitlog import HarnessLog
    from lesionbench.seeding import seed_everything
    from sklearn.metrics import roc_auc_score

    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            _, *pairs = arm.split(":")
            method = WollebWargnier(WollebWargnier.make_config("quick", parse(pairs)), "cpu", dataset.modalities)
            c = method.config
            seed_everything(seed)
            x = method.to_network_input(train.images).cpu()
            method.build(x.shape[1:])
            _, clf_key = method.part_keys()
            schedule = Schedule(c.classifier_steps, c.classifier_batch_size, c.classifier_lr, 0.0, 0.0, c.log_every, c.classifier_max_t)
            logged: dict[str, dict[int, float]] = {}

            class Log(HarnessLog):
                def metric(self, name, value, step=None):
                    logged.setdefault(name, {})[step] = float(value)

            log = Log(None, method, [], 64, "auprc")
            t0 = time.perf_counter()
            method.classifier.load_state_dict(method.classifier_part(train, x, train.labels.long(), clf_key, schedule, log))
            fit_s = time.perf_counter() - t0
            method.classifier.eval()
            healthy = val.labels == 0
            xv = method.to_network_input(val.images[healthy])
            brain = method._padded_brain(val.brain[healthy])
            _, abar = method.betas, method.alphas_cumprod
            fractions = {}
            for name, tmax in (("t0", 0), ("t<=L", c.noise_level)):
                g = torch.Generator().manual_seed(0)
                t = torch.randint(0, tmax + 1, (len(xv),), generator=g)
                x_t = q_sample(xv, t, torch.randn(xv.shape, generator=g), abar).requires_grad_(True)
                logits = method.classifier(x_t, t)
                (grad,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), x_t)
                fractions[name] = float((grad.permute(1, 0, 2, 3)[:, brain] > 0).float().mean())
            with torch.no_grad():
                xs = method.to_network_input(val.images)
                p = torch.softmax(method.classifier(xs, torch.zeros(len(xs), dtype=torch.long)), 1)[:, 1]
            row = {"arm": arm, "seed": seed, "fit_s": round(fit_s, 1), "A_positive": fractions,
                   "slice_auroc_t0": float(roc_auc_score(val.labels.numpy(), p.numpy())), "warnings": log.warnings,
                   "share": logged.get("classifier_constraint_grad_share", {}),
                   "constraint_curve": logged.get("classifier_constraint", {}), "loss": logged.get("classifier_loss", {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| arm | seed | share (logged, first / mid / last) | A > 0 healthy val t=0 | t<=L | slice AUROC t=0 | fit s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        sh = list(r["share"].values())
        shares = " / ".join(f"{v:.2g}" for v in (sh[0], sh[len(sh) // 2], sh[-1])) if sh else "-"
        print(f"| {r['arm']} | {r['seed']} | {shares} | {r['A_positive']['t0']:.3f} | {r['A_positive']['t<=L']:.3f} | "
              f"{r['slice_auroc_t0']:.3f} | {r['fit_s']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=["wargnier", "noise-conditioned"], default="wargnier",
                        help="noise-conditioned: wolleb-wargnier's guiding classifier (arms wolleb-wargnier:key=value)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["saliency", "wargnier"])
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the quick profile's)")
    parser.add_argument("--set", nargs="*", default=[], help="wargnier config overrides key=value (python literals)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="bench-constraint-work")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import ast

    from lesionbench.config import resolve_data_config
    from lesionbench.datasets.synthetic import SynthTumor
    from lesionbench.method import Supervision
    from lesionbench.pipeline import PreparedDataset
    from lesionbench.fitlog import HarnessLog
    from lesionbench.seeding import seed_everything
    from lesionbench.splits import make_split

    data = resolve_data_config("quick", {}, [])
    adapter = SynthTumor(subjects=data.subjects, size=data.size, depth=data.depth)
    split = make_split(adapter.cases(), 0, data.val_fraction, data.test_fraction)
    dataset = PreparedDataset(adapter, data, split, Path(args.workdir) / "cache")
    # in memory: this script indexes whole splits (quick's synth-tumor: tens of MB)
    train, val = (in_memory(dataset.slice_set(part, Supervision.IMAGE)) for part in ("train", "val"))
    val_cases = dataset.val_cases()
    def parse(pairs):
        out = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
        return out

    if args.network == "noise-conditioned":
        return noise_conditioned(args, dataset, train, val, parse)
    overrides = parse(args.set)
    if args.steps:
        overrides["max_steps"] = args.steps
    batch = fixed_batch(train)
    print(f"synth-tumor quick: {len(train)} train slices ({int((train.labels == 0).sum())} healthy), {len(val)} val; "
          f"torch {torch.__version__}, {args.threads} thread(s); the share of saliency's network is that of the wargnier "
          f"defaults' constraint", flush=True)

    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            name, *pairs = arm.split(":")
            cls = Wargnier if name == "wargnier" else Saliency
            arm_overrides = {**overrides, **parse(pairs)}
            if cls is Saliency:
                arm_overrides = {k: v for k, v in arm_overrides.items() if not k.startswith("constraint")}
            config = cls.make_config("quick", arm_overrides)
            share_config = config if cls is Wargnier else Wargnier.make_config("quick", {"max_steps": config.max_steps})
            seed_everything(seed)
            method = cls(config, "cpu", dataset.modalities)
            shares: dict[int, float] = {}
            curve: dict[int, float] = {}
            logged_shares: dict[int, float] = {}
            positive_curve: dict[int, tuple[float, float, float]] = {}  # step: (val auprc, A > 0 on healthy val, slice AUROC)

            class Log(HarnessLog):
                def metric(self, name, value, step=None):
                    super().metric(name, value, step)
                    if name == "constraint" and cls is Wargnier:
                        curve[step] = float(value)
                    if name == "constraint_grad_share":
                        logged_shares[step] = float(value)
                    if name == "classification" and step % 100 == 0:
                        state = torch.get_rng_state()
                        shares[step] = gradient_share(method.network, share_config, batch)
                        torch.set_rng_state(state)

                def evaluate(self, step):
                    value = super().evaluate(step)
                    positive_curve[step] = (round(value, 3), round(healthy_positive_fraction(method.network, val)[0], 3),
                                            round(slice_auroc(method, val), 3))
                    return value

            log = Log(None, method, val_cases, data.predict_batch, "auprc")
            original_build = method._build_network

            def build(in_channels, _orig=original_build):
                _orig(in_channels)
                state = torch.get_rng_state()
                shares[0] = gradient_share(method.network, share_config, batch)
                torch.set_rng_state(state)

            method._build_network = build
            t0 = time.perf_counter()
            method.fit(train, val, log)
            fit_s = time.perf_counter() - t0
            positive, magnitude = healthy_positive_fraction(method.network, val)
            row = {"arm": arm, "seed": seed, "fit_s": round(fit_s, 1), "share": shares, "constraint_curve": curve,
                   "logged_share": logged_shares, "warnings": log.warnings, "val_auprc_A_positive_auroc": positive_curve,
                   "healthy_A_positive": positive, "healthy_A_median_abs": magnitude, "slice_auroc": slice_auroc(method, val),
                   "lesion_slices": lesion_slice_attributions(method.network, val_cases),
                   "map_auprc": map_auprc(method, val_cases),
                   "best": max(log.evaluations, key=lambda e: e[1]) if log.evaluations else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**row, "config": {k: str(v) for k, v in vars(config).items()}}) + "\n")

    print("\n| arm | seed | share at init | share at 100 / 400 / end | A > 0 (healthy val) | median abs A | slice AUROC | fit s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        s = r["share"]
        later = " / ".join(f"{s[k]:.2g}" for k in sorted(s) if k in (100, 400, max(s)))
        print(f"| {r['arm']} | {r['seed']} | {s.get(0, float('nan')):.2g} | {later} | {r['healthy_A_positive']:.3f} | "
              f"{r['healthy_A_median_abs']:.2g} | {r['slice_auroc']:.3f} | {r['fit_s']} |")


if __name__ == "__main__":
    main()
