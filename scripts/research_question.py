"""The suite's research question as one resumable command: does the attribution constraint of
Wargnier-Dauchelle et al. (IEEE TMI 2023) make detection better, alone and inside the diffusion method of
Wolleb et al. (MICCAI 2022)? Planned contrasts between tuned twins, with equal trial budgets.

    python scripts/research_question.py --workdir ../runs/rq [--stages studies context brats controls publish]
        [--datasets synth-tumor synth-ms] [--brats-root PATH] [--reuse WORKDIR ...] [--dry-run]

Every stage resumes: studies continue from their storage (WORKDIR/optuna.db), finished cells are skipped, so
the same command after an interruption goes on where it stopped. ``--dry-run`` prints the commands.

- ``studies``, per synthetic set (``--twins`` picks the pairs): each twin a study of ``--trials`` trials
  (seed 0, validation only, objective ``val/slice_auroc``: image labels only, no pruning), then its best
  configuration on seeds 0..``--seeds``-1, evaluated on test (``tune --seeds-final``):
    * ``saliency`` / ``wargnier``: the constraint alone (wargnier also tunes the constraint's form and weight);
    * ``wolleb`` / ``wolleb-wargnier[variant=guidance]``: the constraint inside diffusion (guidance also tunes
      the constraint's share);
    * ``wolleb-wargnier[variant=masked]``, ``[variant=fusion]``: only their inference settings, on the
      constrained classifier of guidance's best configuration (fixed by ``--set``; trained once and cached);
    * ``cfg-diffusion`` / ``wolleb``: two ways to guide;
    * then the voxel objective (``val/auprc``, validation voxel labels) for ``wolleb`` and for the
      ``wolleb-wargnier`` variant whose study reached the best validation value, labelled ``...-tuned-auprc``.
- ``context``: the untuned rows (``--context-methods``, default intensity vae fanogan ddpm) on the synthetic
  sets, seeds 0..``--seeds``-1, through a ``run --storage`` queue; those finished in this workdir or a
  ``--reuse`` one are not run again.
- ``brats``: brats2018 (``--brats-root``) in ``--folds``-fold cross-validation at ``--brats-size`` px, seed 0:
  every tuned row with its synth-tumor configuration (no study on brats: ten cases leave no data apart from
  the folds' test sets for one), and the context rows. The configurations are this workdir's studies, or
  with ``--tuned DIR`` the files ``DIR/STUDY.toml``: ``docs/rq-tuned`` holds the ones #22 published.
- ``--tuned DIR`` on the ``studies`` stage: no study is run; each tuned row runs its final seeds from
  ``DIR/STUDY.toml`` (its study's name on that dataset), as ``tune --seeds-final`` would from the study's best
  configuration. The tables then cost the test runs only, and reproduce the published rows from the
  committed configurations.
- ``controls``: the post hoc controls of ``--controls DIR`` (default ``docs/rq-controls``), outside the planned
  family: every ``*.toml`` there but ``family.toml`` is one row (a method at another study's settings, or with
  the constraint off), run on the dataset that ``family.toml`` names, seeds 0..``--seeds``-1; ``family.toml``
  lists their contrasts, one family of its own, published as ``controls-DATASET.md`` (table) and
  ``contrasts-controls-DATASET.md`` (Holm over that family only).
- ``publish``: per dataset, the Markdown and LaTeX tables and the HTML report (WORKDIR/published), and the
  planned contrasts (``contrasts-DATASET.md``): Hodges-Lehmann effect of AP per volume, bootstrap interval,
  Wilcoxon signed-rank, Holm over this family. The last contrast, the best learned row against ``intensity``,
  takes the learned row (tuned or trained context) with the highest mean test AP per volume: chosen on test,
  which favours it, so a loss to intensity is conservative. Where each row's maps fall
  (``placement-DATASET.md``, :mod:`lesionbench.leaderboard.placement`): top precision and floor share, the
  numbers behind the qualitative grids, and the slice AUROC beside what a slice's brain area alone scores. The
  compute each row cost (``compute-DATASET.md``, :mod:`lesionbench.leaderboard.compute`): core-hours of its
  study's trials and of its test runs. ``--reuse DIR`` adds the runs of other workdirs (same splits), e.g.
  context rows run earlier.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

CONSTRAINT = "wolleb-wargnier"
VARIANTS = ("guidance", "masked", "fusion")
SLICE, VOXEL = "val/slice_auroc", "val/auprc"


def variant_label(variant: str) -> str:
    return f"{CONSTRAINT}[variant={variant}]"


def study_dir(workdir: Path, label: str, dataset: str, profile: str, objective: str) -> Path:
    """Where ``lesionbench tune`` keeps a study's best.toml (its default study name)."""
    from lesionbench.tuning import default_study_name

    return workdir / "tune" / default_study_name(label, dataset, profile, objective)


def tuned_label(label: str, objective: str) -> str:
    return f"{label}-tuned" + ("-auprc" if objective == VOXEL else "")


def complete_rows(runs, dataset: str, rows: list[str], seeds: int) -> set[str]:
    """The rows with a finished run on ``dataset`` for every seed 0..``seeds``-1 (``runs``: load_runs's table)."""
    here = runs[runs["tags.dataset"] == dataset]
    have = set(zip(here["tags.label"], here["tags.seed"].astype(str)))
    return {r for r in rows if all((r, str(s)) in have for s in range(seeds))}


def partial_folds(runs, dataset: str) -> set[str]:
    """The rows on ``dataset`` with a cross-validation seed that lacks a finished fold (``runs``: load_runs's
    table): the leaderboard leaves such a seed out, so they wait for their last folds before they are published."""
    here = runs[runs["tags.dataset"] == dataset]
    if "tags.folds" not in here or here["tags.folds"].isna().all():
        return set()
    partial = set()
    for (label, _), group in here[here["tags.folds"].notna()].groupby(["tags.label", "tags.seed"]):
        if set(group["tags.fold"].astype(int)) != set(range(int(group["tags.folds"].iloc[0]))):
            partial.add(label)
    return partial


class Plan:
    def __init__(self, args):
        self.args = args
        self.workdir = args.workdir.resolve()
        self.storage = f"sqlite:///{self.workdir / 'optuna.db'}"
        self.lb = [sys.executable, "-m", "lesionbench"]

    # -- running ----------------------------------------------------------------------------------------
    def call(self, argv: list[str]) -> None:
        """Run one lesionbench command (or print it with --dry-run); a failure stops the script, naming it."""
        line = shlex.join(["lesionbench", *argv])
        print(f"$ {line}", flush=True)
        if self.args.dry_run:
            return
        code = subprocess.call([*self.lb, *argv])
        if code != 0:
            raise SystemExit(f"research_question: `{line}` exited with {code}; the same command resumes it")

    def common(self) -> list[str]:
        a = self.args
        return ["--profile", a.profile, "--device", a.device, "--workdir", str(self.workdir),
                *[x for s in a.set_options for x in ("--set", s)]]

    # -- studies ----------------------------------------------------------------------------------------
    def tune(self, method: str, dataset: str, objective: str = SLICE, sets=(), label: str | None = None) -> None:
        a = self.args
        argv = ["tune", "--method", method, "--dataset", dataset, "--trials", str(a.trials), "--objective", objective,
                "--seed", "0", "--pruner", "none", "--seeds-final", str(a.seeds), "--storage", self.storage,
                *self.common()]
        for s in sets:
            argv += ["--set", s]
        if label is not None:
            argv += ["--label", label]
        self.call(argv)

    def best(self, label: str, dataset: str, objective: str = SLICE) -> Path:
        return study_dir(self.workdir, label, dataset, self.args.profile, objective) / "best.toml"

    def best_config(self, label: str, dataset: str, objective: str = SLICE) -> dict:
        path = self.best(label, dataset, objective)
        if self.args.dry_run and not path.exists():
            return {}
        method = label.split("[")[0]
        return tomllib.loads(path.read_text(encoding="utf-8"))[method]

    def best_value(self, label: str, dataset: str, objective: str = SLICE) -> float:
        """The study's best validation value, from its storage."""
        import optuna

        from lesionbench.tuning import default_study_name

        name = default_study_name(label, dataset, self.args.profile, objective)
        return optuna.load_study(study_name=name, storage=self.storage).best_value

    def studies(self, dataset: str) -> None:
        if self.args.tuned is not None:
            self.tuned_finals(dataset)
            return
        twins = self.args.twins
        if "constraint" in twins:
            self.tune("saliency", dataset)
            self.tune("wargnier", dataset)
        if "diffusion" in twins or "guidance" in twins:
            self.tune("wolleb", dataset)
        if "diffusion" in twins:
            self.tune(CONSTRAINT, dataset, sets=[f"{CONSTRAINT}.variant=guidance"])
            weight = self.best_config(variant_label("guidance"), dataset).get("constraint_weight", "<guidance-best-weight>")
            for variant in ("masked", "fusion"):
                self.tune(CONSTRAINT, dataset,
                          sets=[f"{CONSTRAINT}.variant={variant}", f"{CONSTRAINT}.constraint_weight={weight}"])
        if "guidance" in twins:
            self.tune("cfg-diffusion", dataset)
        if "diffusion" in twins:  # the voxel objective: wolleb and the variant with the best validation value
            self.tune("wolleb", dataset, VOXEL, label=tuned_label("wolleb", VOXEL))
            best = "<best-variant>" if self.args.dry_run else max(
                VARIANTS, key=lambda v: self.best_value(variant_label(v), dataset))
            sets = [f"{CONSTRAINT}.variant={best}"] + ([] if best == "guidance" else [f"{CONSTRAINT}.constraint_weight={weight}"])
            self.tune(CONSTRAINT, dataset, VOXEL, sets=sets, label=tuned_label(variant_label(best), VOXEL))

    # -- rows ------------------------------------------------------------------------------------------
    def tuned_rows(self) -> list[tuple[str, str]]:
        """(label of the study, its objective) of every tuned row the chosen twins can make, in table order
        (of the voxel-objective variants, only the best one's study exists)."""
        twins, rows = self.args.twins, []
        if "constraint" in twins:
            rows += [("saliency", SLICE), ("wargnier", SLICE)]
        if "diffusion" in twins or "guidance" in twins:
            rows.append(("wolleb", SLICE))
        if "diffusion" in twins:
            rows += [(variant_label(v), SLICE) for v in VARIANTS]
        if "guidance" in twins:
            rows.append(("cfg-diffusion", SLICE))
        if "diffusion" in twins:
            rows += [("wolleb", VOXEL)] + [(variant_label(v), VOXEL) for v in VARIANTS]
        return rows

    def unfinished(self, dataset: str, rows: list[str], seeds: int) -> list[str]:
        """The ``rows`` that lack a finished run on ``dataset`` for some seed 0..``seeds``-1, in this workdir and
        the ``--reuse`` ones: cells run before are reused, not run again (the leaderboard then checks that they
        share the split)."""
        from lesionbench.leaderboard.tables import load_runs

        uris = [u for u in self.uris() if Path(u.removeprefix("sqlite:///")).exists()]
        if self.args.dry_run or not uris:
            return list(rows)
        done = complete_rows(load_runs(uris, "lesionbench"), dataset, rows, seeds)
        return [r for r in rows if r not in done]

    def context(self) -> None:
        a = self.args
        for dataset in a.datasets:
            methods = self.unfinished(dataset, a.context_methods, a.seeds)
            if methods:
                self.call(["run", "--methods", *methods, "--datasets", dataset, "--seeds", *map(str, range(a.seeds)),
                           "--storage", f"sqlite:///{self.workdir / 'queue.db'}", *self.common()])

    def tuned_config(self, label: str, dataset: str, objective: str) -> Path:
        """The configuration of a tuned row: its study's best.toml on ``dataset`` in this workdir, or with
        ``--tuned DIR`` the file ``DIR/STUDY.toml`` (``docs/rq-tuned`` holds the ones #22 published)."""
        if self.args.tuned is None:
            return self.best(label, dataset, objective)
        from lesionbench.tuning import default_study_name

        return self.args.tuned / f"{default_study_name(label, dataset, self.args.profile, objective)}.toml"

    def tuned_rows_to_run(self, dataset: str) -> list[tuple[Path, str]]:
        """(configuration, objective) of every tuned row on ``dataset``'s studies; of the voxel-objective
        variants only the one that has a configuration (the variant its study chose). A missing one stops the
        script, naming the file."""
        a, todo = self.args, []
        for label, objective in self.tuned_rows():
            best = self.tuned_config(label, dataset, objective)
            if not best.exists() and (a.tuned is not None or not a.dry_run):  # a dry run before the studies: to come
                if objective == VOXEL and label != "wolleb":
                    continue  # not the variant chosen for the voxel objective
                fix = ("pass --tuned docs/rq-tuned or run the studies stage" if a.tuned is None
                       else "check --tuned, or run the studies stage without --tuned")
                raise SystemExit(f"research_question: {best} is missing: {fix} on {dataset} first")
            todo.append((best, objective))
        return todo

    def tuned_finals(self, dataset: str) -> None:
        """With ``--tuned DIR``: no study; each tuned row's final runs from ``DIR/STUDY.toml``, the runs
        ``tune --seeds-final`` makes from the study's best configuration (seeds 0..K-1, evaluated on test, the
        checkpoints kept on the objective the row was tuned on)."""
        seeds = [str(s) for s in range(self.args.seeds)]
        for best, objective in self.tuned_rows_to_run(dataset):
            self.call(["run", "--config", str(best), "--objective", objective.removeprefix("val/"),
                       "--datasets", dataset, "--seeds", *seeds, *self.common()])

    def brats(self) -> None:
        a = self.args
        if a.brats_root is None:
            raise SystemExit("research_question: the brats stage needs --brats-root (the BraTS 2018 folder)")
        data = ["--datasets", "brats", "--root", f"brats={a.brats_root}", "--folds", str(a.folds), "--seeds", "0",
                "--set", f"data.size={a.brats_size}", *self.common()]
        for best, objective in self.tuned_rows_to_run("synth-tumor"):
            # the objective the row was tuned on, as tune's final runs had it: it picks the checkpoints of the
            # methods that keep their best (the classifier twins), so a slice row never reads validation voxels
            self.call(["run", "--config", str(best), "--objective", objective.removeprefix("val/"), *data])
        methods = self.unfinished("brats", a.context_methods, 1)
        if methods:
            self.call(["run", "--methods", *methods, *data])

    # -- post hoc controls ------------------------------------------------------------------------------
    def control_family(self) -> tuple[str, list[tuple[str, str]], list[Path]] | None:
        """(dataset, contrasts, control configs) of ``--controls DIR``, or None where it has no family.toml."""
        folder = self.args.controls
        family = folder / "family.toml"
        if not family.exists():
            return None
        try:
            table = tomllib.loads(family.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"research_question: {family} is not readable TOML: {exc}") from None
        dataset, pairs = table.get("dataset"), table.get("contrasts")
        if not isinstance(dataset, str) or not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in pairs):
            raise SystemExit(f"research_question: {family}: expected dataset = \"NAME\" and contrasts = "
                             "[[\"ROW\", \"REFERENCE\"], ...]")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", dataset):  # it names files in WORKDIR/published
            raise SystemExit(f"research_question: {family}: dataset {dataset!r} is not a dataset name")
        configs = sorted(f for f in folder.glob("*.toml") if f.name != "family.toml")
        return dataset, [tuple(p) for p in pairs], configs

    def controls(self) -> None:
        found = self.control_family()
        if found is None:
            raise SystemExit(f"research_question: the controls stage needs {self.args.controls / 'family.toml'}")
        dataset, _, configs = found
        labels = {config: self.control_label(config) for config in configs}
        todo = set(self.unfinished(dataset, [l for l in labels.values() if l is not None], self.args.seeds))
        for config, label in labels.items():
            if label is None or label in todo:  # else finished here or in a --reuse workdir
                self.call(["run", "--config", str(config), "--objective", SLICE.removeprefix("val/"), "--datasets",
                           dataset, "--seeds", *map(str, range(self.args.seeds)), *self.common()])

    @staticmethod
    def control_label(config: Path) -> str | None:
        """The row label a control config sets (None: the run names it, and errors name the file)."""
        try:
            table = tomllib.loads(config.read_text(encoding="utf-8"))
            return table[table["method"]]["label"]
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
            return None

    def publish_controls(self, datasets: list[str], runs, stores: list[str]) -> None:
        found = self.control_family()
        if found is None or found[0] not in datasets:
            return
        dataset, pairs, _ = found
        out = self.workdir / "published"
        rows = list(dict.fromkeys(x for p in pairs for x in p))
        if runs is not None:  # a row enters once all its seeds have finished (a contrast averages over seeds)
            known = complete_rows(runs, dataset, rows, self.args.seeds)
            missing = [r for r in rows if r not in known]
            if missing:
                print(f"research_question: controls on {dataset}: seeds 0..{self.args.seeds - 1} not all finished yet "
                      f"for {', '.join(missing)}", flush=True)
            rows = [r for r in rows if r in known]
            pairs = [p for p in pairs if {*p} <= known]
        if not pairs:
            return
        base = ["leaderboard", *stores, "--datasets", dataset, "--rows", *rows, "--format", "md",
                "--metrics", "auprc", "auprc_vol_mean"]
        self.call([*base, "--out", str(out / f"controls-{dataset}.md")])
        argv = [*base, "--out", os.devnull]
        for row, ref in pairs:
            argv += ["--contrast", row, ref]
        print(f"$ {shlex.join(['lesionbench', *argv])} > {out / f'contrasts-controls-{dataset}.md'}", flush=True)
        if not self.args.dry_run:
            text = subprocess.run([*self.lb, *argv], capture_output=True, text=True)
            if text.returncode != 0:
                raise SystemExit(f"research_question: the controls' contrasts on {dataset} failed: {text.stderr.strip()}")
            note = (f"Post hoc controls ({self.args.controls / 'family.toml'}), outside the planned family: Holm over "
                    "these contrasts only.\n\n")
            (out / f"contrasts-controls-{dataset}.md").write_text(note + text.stdout, encoding="utf-8")

    # -- publishing ------------------------------------------------------------------------------------
    def contrasts(self, dataset: str, runs) -> list[tuple[str, str]]:
        """The planned family, fixed in advance (those the chosen twins make)."""
        wolleb, twins, pairs = tuned_label("wolleb", SLICE), self.args.twins, []
        if "constraint" in twins:
            pairs.append((tuned_label("wargnier", SLICE), tuned_label("saliency", SLICE)))
        if "diffusion" in twins:
            pairs += [(tuned_label(variant_label(v), SLICE), wolleb) for v in VARIANTS]
        if "guidance" in twins:
            pairs.append((tuned_label("cfg-diffusion", SLICE), wolleb))
        best = self.best_learned(dataset, runs) if "intensity" in self.args.context_methods else None
        if best is not None:
            pairs.append((best, "intensity"))
        return pairs

    def best_learned(self, dataset: str, runs) -> str | None:
        """The learned row (tuned, or a trained context row) with the highest mean test AP per volume on
        ``dataset`` (chosen on test: see the module); None while no learned row has finished there."""
        if self.args.dry_run:
            return "<best-tuned-row>"
        from lesionbench.leaderboard.tables import build_leaderboard

        learned = [tuned_label(l, o) for l, o in self.tuned_rows()] + [m for m in self.args.context_methods if m != "intensity"]
        runs = runs[runs["tags.label"].isin(learned) & (runs["tags.dataset"] == dataset)]
        if runs.empty:
            return None
        lb = build_leaderboard(runs, ("auprc_vol_mean",), [dataset], n_resamples=0)
        return str(lb.means[(dataset, "auprc_vol_mean")].idxmax())

    def uris(self) -> list[str]:
        return [f"sqlite:///{d.resolve() / 'mlflow.db'}" for d in [self.workdir, *self.args.reuse]]

    def publish(self, datasets: list[str]) -> None:
        out = self.workdir / "published"
        rows = [tuned_label(l, o) for l, o in self.tuned_rows()] + list(self.args.context_methods)
        stores = [a for d in [self.workdir, *self.args.reuse] for a in ("--workdir", str(d))]
        runs = None
        if not self.args.dry_run:
            from lesionbench.leaderboard.tables import load_runs

            runs = load_runs(self.uris(), "lesionbench")  # every stage has run: read once
        for dataset in datasets:
            if runs is not None:
                partial = partial_folds(runs, dataset)
                if partial & set(rows):
                    print(f"research_question: {dataset}: not published until every fold has finished: "
                          f"{', '.join(r for r in rows if r in partial)}", flush=True)
                known = set(runs.loc[runs["tags.dataset"] == dataset, "tags.label"]) - partial
                rows_here = [r for r in rows if r in known]
                voxel_variants = [tuned_label(variant_label(v), VOXEL) for v in VARIANTS]
                chosen = any(r in known for r in voxel_variants)  # one variant has the voxel study: the others never run
                missing = [r for r in rows if r not in known and not (chosen and r in voxel_variants)]
                if missing:
                    print(f"research_question: {dataset}: no finished runs yet for {', '.join(missing)}", flush=True)
                if not rows_here:
                    continue  # nothing to publish on this dataset yet
            else:
                rows_here = rows
            base = ["leaderboard", *stores, "--datasets", dataset, "--rows", *rows_here]
            for fmt, ext in (("md", "md"), ("latex", "tex"), ("html", "html")):
                self.call([*base, "--format", fmt, "--out", str(out / f"leaderboard-{dataset}.{ext}")])
            pairs = [p for p in self.contrasts(dataset, runs) if self.args.dry_run or {*p} <= set(rows_here)]
            argv = ["leaderboard", *stores, "--datasets", dataset, "--rows", *rows_here, "--format", "md",
                    "--metrics", "auprc_vol_mean", "--out", os.devnull]
            for row, ref in pairs:
                argv += ["--contrast", row, ref]
            print(f"$ {shlex.join(['lesionbench', *argv])} > {out / f'contrasts-{dataset}.md'}", flush=True)
            if not self.args.dry_run and pairs:
                out.mkdir(parents=True, exist_ok=True)
                text = subprocess.run([*self.lb, *argv], capture_output=True, text=True)
                if text.returncode != 0:
                    raise SystemExit(f"research_question: the contrasts on {dataset} failed: {text.stderr.strip()}")
                (out / f"contrasts-{dataset}.md").write_text(text.stdout, encoding="utf-8")
            if not self.args.dry_run and rows_here:  # where the maps fall: the numbers behind the grids
                from lesionbench.leaderboard.placement import placement_table, render_placement

                out.mkdir(parents=True, exist_ok=True)
                table = render_placement(placement_table(runs, dataset, rows_here), dataset)
                (out / f"placement-{dataset}.md").write_text(table, encoding="utf-8")
                print(f"where the maps fall written to {out / f'placement-{dataset}.md'}", flush=True)
            if not self.args.dry_run and rows_here:  # the compute each row cost: its study's trials, its test runs
                from lesionbench.leaderboard.compute import compute_table, ended_runs, render_compute
                from lesionbench.tuning import default_study_name

                studies = {tuned_label(l, o): default_study_name(l, dataset, self.args.profile, o) for l, o in self.tuned_rows()}
                table = compute_table(ended_runs(self.uris(), dataset), {r: studies.get(r) for r in rows_here})
                (out / f"compute-{dataset}.md").write_text(render_compute(*table, dataset), encoding="utf-8")
                print(f"compute spent written to {out / f'compute-{dataset}.md'}", flush=True)
        self.publish_controls(datasets, runs, stores)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="where studies, runs and the published tables go")
    p.add_argument("--stages", nargs="+", choices=("studies", "context", "brats", "controls", "publish"),
                   default=["studies", "context", "publish"], help="default: studies context publish (brats: with --brats-root)")
    p.add_argument("--datasets", nargs="+", default=["synth-tumor", "synth-ms"])
    p.add_argument("--twins", nargs="+", choices=("constraint", "diffusion", "guidance"),
                   default=["constraint", "diffusion", "guidance"],
                   help="constraint: wargnier / saliency; diffusion: wolleb-wargnier's variants / wolleb (and the voxel "
                        "objective); guidance: cfg-diffusion / wolleb")
    p.add_argument("--profile", default="quick")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3, help="final seeds 0..K-1 of each tuned row and of the context rows")
    p.add_argument("--context-methods", nargs="*", default=["intensity", "vae", "fanogan", "ddpm"])
    p.add_argument("--brats-root", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--brats-size", type=int, default=64)
    p.add_argument("--tuned", type=Path, metavar="DIR",
                   help="the tuned configurations from DIR/STUDY.toml (e.g. docs/rq-tuned) instead of this workdir's "
                        "studies: brats runs the synth-tumor ones; the studies stage runs no study, only each row's "
                        "final runs from its file")
    p.add_argument("--reuse", type=Path, nargs="*", default=[], metavar="WORKDIR",
                   help="publish: also the runs of these workdirs (the same splits)")
    p.add_argument("--controls", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "rq-controls",
                   metavar="DIR", help="the controls stage: control configs and their family.toml")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="set_options", action="append", default=[], metavar="data.KEY=VALUE",
                   help="added to every study and run (e.g. data.cache_dtype=float32 to extend a workdir made before "
                        "float16 became the default)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    plan = Plan(args)
    if "studies" in args.stages:
        for dataset in args.datasets:
            plan.studies(dataset)
    if "context" in args.stages:
        plan.context()
    if "brats" in args.stages:
        plan.brats()
    if "controls" in args.stages:
        plan.controls()
    if "publish" in args.stages:
        plan.publish(list(dict.fromkeys([*args.datasets, *(["brats"] if "brats" in args.stages or args.brats_root else [])])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
