"""`toolkit tune`: a multi-objective search (validation accuracy against one cost) under hard
budgets, driven by Optuna, with the toolkit's own multi-fidelity promotion.

One Optuna trial is one candidate, sampled from the space (toolkit.experiments.tune_space):

1. judged from its spec alone (tune_estimate, tune_budget.before_training): a candidate that cannot
   fit is told to Optuna as infeasible (its constraint vector > 0) without any training;
2. trained at the first fidelity (the shortest epochs) on the training split, evaluated on the
   validation holdout only (the test set is never evaluated), measured where a budget or the cost
   needs it (tune_job); the trial's values are (validation accuracy, cost), its constraints the
   measured budgets';
3. after each trial, the candidates that finished a fidelity are ordered over the multi-objective
   front and the top 1/eta promoted to the next, longer one (tune_front.promotable); a promotion's
   result is a study user attribute (an Optuna trial cannot change once told).

The front is the non-dominated feasible candidates of the longest fidelity that has results;
Spearman's rho says how well the first fidelity's accuracy ranked the candidates the last one
trained. Everything is in the study's storage, so a search resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core.errors import Interrupted, UsageError
from toolkit.experiments import tune_study
from toolkit.experiments.tune_budget import (
    FIGURES,
    Budget,
    Cost,
    before_training,
    check_space_fits,
    cost_value,
    figures_of,
    needs,
    violations,
    why_not,
)
from toolkit.experiments.tune_estimate import Estimate, estimate
from toolkit.experiments.tune_front import front_ranks, promotable, spearman
from toolkit.experiments.tune_space import Space
from toolkit.specs import Spec

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TuneRequest:
    space: Space
    budget: Budget
    cost: Cost
    root: Path  # the artifacts root
    trials: int = 20
    rungs: tuple[int, ...] = (2, 6)  # epochs of each fidelity, shortest first
    eta: int = 3
    seed: int = 0
    limit_train: int | None = None
    data_dir: Path | None = None
    storage: str | None = None  # an Optuna storage URL (None: the journal file)
    study: str | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        if not self.rungs or any(e < 1 for e in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise UsageError(f"--rungs must be increasing positive epochs such as 2,6; got {self.rungs}")
        if self.eta < 2:
            raise UsageError(f"--eta must be at least 2, got {self.eta}")
        if self.space.teachers():
            raise UsageError(f"{self.space.source}: a teacher choice in the space is not supported yet "
                             "(docs/tune.md); remove recipe.teacher")

    def config(self) -> dict[str, Any]:
        """What identifies the search (its study)."""
        return {"space": self.space.describe(), "budget": self.budget.to_dict(), "cost": self.cost.name,
                "rungs": list(self.rungs), "eta": self.eta, "seed": self.seed,
                "limit_train": self.limit_train}

    @property
    def name(self) -> str:
        return self.study or tune_study.study_name(self.config())

    @property
    def folder(self) -> Path:
        """The search's own root: its journal and its candidates' runs."""
        return self.root / "tune" / self.name


@dataclass
class Candidate:
    """One trial's candidate and what is known of it."""

    trial: int
    params: dict[str, Any]
    state: str  # infeasible (before training), complete, failed
    why: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    cost: float | None = None
    accuracy: dict[int, float] = field(default_factory=dict)  # rung -> validation accuracy
    val_images: int | None = None  # the validation holdout's size (the same at every fidelity)

    def interval(self, rung: int) -> list[float] | None:
        """The Wilson 95% interval of the accuracy at a fidelity, over the validation images."""
        from toolkit.core.stats import interval_of_accuracy

        if not self.val_images or rung not in self.accuracy:
            return None
        found = interval_of_accuracy(self.accuracy[rung], self.val_images)
        return [round(found.low, 4), round(found.high, 4)]

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and not self.why


def check(request: TuneRequest) -> int:
    """Before any training: can anything of the space fit? (A UsageError when not.)"""
    archs, exhaustive = request.space.architectures(seed=request.seed)
    return check_space_fits(archs, exhaustive, family=request.space.family, budget=request.budget,
                            source=request.space.source)


def search(request: TuneRequest, *, progress: Progress | None = None,
           checked: bool = False) -> dict[str, Any]:
    """Run (or resume) the search until --trials trials finished; the summary of the study
    (`checked`: `check` was called already)."""
    import optuna

    if not checked:
        check(request)
    sampler = optuna.samplers.TPESampler(seed=request.seed)  # reads the trials' constraints
    study = tune_study.open_study(name=request.name, storage=request.storage, folder=request.folder,
                                  config=request.config(), sampler=sampler)
    rerun = tune_study.recover(study)
    notify = progress or (lambda event: None)
    if rerun:
        notify({"event": "rerun", "trials": rerun})
    _promote(study, request, notify)  # promotions a dead search owed
    while tune_study.counted(study) < request.trials:
        trial = study.ask()
        tune_study.claim(trial)
        _run_trial(study, trial, request, notify)
        _promote(study, request, notify)
    return summary(study, request)


def _constrain(trial: Any, values: list[float]) -> None:
    """The trial's constraints, one per figure ((value - limit) / limit; feasible when all <= 0)."""
    for figure, value in zip(FIGURES, values, strict=True):
        trial.set_constraint(figure, value)


def _candidate_spec(request: TuneRequest, params: dict[str, Any] | None, trial: Any, rung: int) -> Spec:
    """The candidate's spec at a fidelity (from a live trial's picks, or a finished one's params)."""
    arch, recipe = request.space.suggest(trial if trial is not None else _Replay(params or {}))
    return request.space.candidate(arch, recipe, epochs=request.rungs[rung], prefix=request.name)


class _Replay:
    """Answers a space's suggestions from a finished trial's parameters."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        return int(self.params[name])

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        return float(self.params[name])


def _run_trial(study: Any, trial: Any, request: TuneRequest, notify: Progress) -> None:
    """Judge, train and measure one candidate at the first fidelity; tell Optuna."""
    import optuna

    try:
        spec = _candidate_spec(request, None, trial, 0)
    except UsageError as exc:  # an impossible combination of picks: nothing to train
        trial.set_user_attr("why", [exc.message])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        notify({"event": "trial", "trial": trial.number, "state": "invalid", "why": [exc.message]})
        return
    est = estimate(spec)
    trial.set_user_attr("spec", spec.name)
    reasons = before_training(request.budget, est)
    if reasons:
        _tell_infeasible(study, trial, request, est, reasons)
        notify({"event": "trial", "trial": trial.number, "state": "infeasible", "why": reasons,
                "spec": spec.name})
        return
    notify({"event": "start", "trial": trial.number, "fidelity": request.rungs[0], "spec": spec.name})
    result = _job(request, spec, trial.number, 0, measure=needs(request.budget, request.cost), live=trial)
    if result.error:
        trial.set_user_attr("error", result.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        notify({"event": "trial", "trial": trial.number, "state": "failed", "why": [result.error]})
        return
    figures = figures_of(est, result.measured)
    value = cost_value(request.cost, _with_estimates(figures, est))
    # a latency budget judges the upper end of the median's interval (tune_job.median_interval)
    judged = {**figures, "latency": result.measured.get("latency_high", figures["latency"])}
    trial.set_user_attr("measured", result.measured)
    _constrain(trial, violations(request.budget, judged))
    trial.set_user_attr("why", why_not(request.budget, judged))
    trial.set_user_attr("val_images", result.val_images)
    study.tell(trial, [float(result.val_accuracy), float(value)])
    notify({"event": "trial", "trial": trial.number, "state": "complete", "fidelity": request.rungs[0],
            "accuracy": result.val_accuracy, "cost": value, "why": why_not(request.budget, judged),
            "spec": spec.name, "reused": result.reused})


def _tell_infeasible(study: Any, trial: Any, request: TuneRequest, est: Estimate, reasons: list[str]) -> None:
    """Told without training: the estimates count as the figures, so the sampler learns where the
    budget is (before_training's reasons imply a positive violation)."""
    figures = _with_estimates(figures_of(est, None), est)
    trial.set_user_attr("why", reasons)
    trial.set_user_attr("before_training", True)
    _constrain(trial, violations(request.budget, figures))
    study.tell(trial, [0.0, float(cost_value(request.cost, figures))])


def _with_estimates(figures: dict[str, float | None], est: Estimate) -> dict[str, float | None]:
    """Figures with the estimates where nothing was measured (the file and the arena)."""
    out = dict(figures)
    out["flash"] = out["flash"] if out["flash"] is not None else est.flash_bytes
    out["arena"] = out["arena"] if out["arena"] is not None else est.arena_bytes
    return out


def _job(request: TuneRequest, spec: Spec, number: int, rung: int, *, measure: tuple[str, ...],
         live: Any = None) -> Any:
    """Train (and measure) one candidate at one fidelity, here; an interrupt marks the live trial
    failed and interrupted, so the next start reruns it."""
    import optuna

    from toolkit.experiments import tune_job

    job = tune_job.Job(trial=number, rung=rung, spec=spec, seed=request.seed, limit_train=request.limit_train,
                       root=request.folder, data_dir=request.data_dir, measure=measure)
    try:
        return tune_job.run_job(job)
    except (KeyboardInterrupt, Interrupted):
        if live is not None:
            live.set_user_attr(tune_study.INTERRUPTED, True)
            live.study.tell(live, state=optuna.trial.TrialState.FAIL)
        raise


# ---------------------------------------------------------------- promotion


def _promote(study: Any, request: TuneRequest, notify: Progress) -> None:
    """Train every candidate the promotion rule owes a longer fidelity, until none is owed."""
    while True:
        owed = _owed(study, request)
        if owed is None:
            return
        cand, rung = owed
        spec = _candidate_spec(request, cand.params, None, rung)
        notify({"event": "start", "trial": cand.trial, "fidelity": request.rungs[rung], "spec": spec.name})
        result = _job(request, spec, cand.trial, rung, measure=())
        key = _rung_key(rung, cand.trial)
        if result.error:
            study.set_user_attr(key, {"error": result.error})
            notify({"event": "promotion", "trial": cand.trial, "state": "failed", "why": [result.error]})
            continue
        study.set_user_attr(key, {"val_accuracy": result.val_accuracy, "spec": spec.name,
                                  "train_seconds": result.train_seconds})
        notify({"event": "promotion", "trial": cand.trial, "state": "complete",
                "fidelity": request.rungs[rung], "accuracy": result.val_accuracy, "cost": cand.cost,
                "spec": spec.name, "reused": result.reused})


def _rung_key(rung: int, trial: int) -> str:
    return f"rung{rung}:{trial}"


def _owed(study: Any, request: TuneRequest) -> tuple[Candidate, int] | None:
    """The first (candidate, fidelity) the rule promotes that has not been trained at it yet."""
    candidates = candidates_of(study, request)
    for rung in range(len(request.rungs) - 1):
        finished = [c for c in candidates if c.feasible and rung in c.accuracy]
        points = [(c.accuracy[rung], c.cost) for c in finished]
        for i in promotable(points, request.eta):
            if _rung_key(rung + 1, finished[i].trial) not in study.user_attrs:
                return finished[i], rung + 1
    return None


def candidates_of(study: Any, request: TuneRequest) -> list[Candidate]:
    """Every finished trial as a candidate, with its accuracy at each fidelity it reached."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        if t.user_attrs.get(tune_study.INTERRUPTED):
            continue
        state = ("infeasible" if t.user_attrs.get("before_training") or t.state == TrialState.PRUNED
                 else "complete" if t.state == TrialState.COMPLETE else "failed")
        cand = Candidate(t.number, dict(t.params), state, list(t.user_attrs.get("why", [])),
                         val_images=t.user_attrs.get("val_images"))
        if t.state == TrialState.COMPLETE:
            cand.cost = t.values[1]
            if state == "complete":
                cand.accuracy[0] = t.values[0]
                cand.figures = dict(t.user_attrs.get("measured", {}))
        for rung in range(1, len(request.rungs)):
            value = attrs.get(_rung_key(rung, t.number), {}).get("val_accuracy")
            if value is not None:
                cand.accuracy[rung] = value
        out.append(cand)
    return out


# ---------------------------------------------------------------- the outcome


def summary(study: Any, request: TuneRequest) -> dict[str, Any]:
    """The search's outcome: counts, the front (longest fidelity with results), Spearman's rho."""
    candidates = candidates_of(study, request)
    feasible = [c for c in candidates if c.feasible]
    top = max((max(c.accuracy) for c in feasible if c.accuracy), default=0)
    at_top = [c for c in feasible if top in c.accuracy]
    ranks = front_ranks([(c.accuracy[top], c.cost) for c in at_top])
    front = sorted((c for c, r in zip(at_top, ranks, strict=True) if r == 0), key=lambda c: c.cost)
    reached = [c for c in feasible if len(request.rungs) > 1 and len(request.rungs) - 1 in c.accuracy]
    rho = spearman([c.accuracy[0] for c in reached], [c.accuracy[len(request.rungs) - 1] for c in reached])
    counts = {state: sum(c.state == state for c in candidates)
              for state in ("complete", "infeasible", "failed")}
    return {
        "study": request.name, "storage": request.storage or str(request.folder / tune_study.JOURNAL),
        "space": request.space.source, "budget": request.budget.describe(), "cost": request.cost.name,
        "cost_label": request.cost.label, "rungs": list(request.rungs), "eta": request.eta,
        "trials": len(candidates), **counts, "feasible": len(feasible),
        "trained": sum(len(c.accuracy) for c in candidates),
        "front_fidelity": request.rungs[top] if at_top else None,
        "front": [_member(study, request, c, top) for c in front],
        "points": [{"trial": c.trial, "val_accuracy": c.accuracy[top], "interval": c.interval(top),
                    "cost": c.cost, "front": c in front} for c in at_top],
        "spearman_rho": rho, "spearman_pairs": len(reached),
    }


def _member(study: Any, request: TuneRequest, cand: Candidate, rung: int) -> dict[str, Any]:
    spec = _candidate_spec(request, cand.params, None, rung)
    est = estimate(spec)
    return {"trial": cand.trial, "spec": spec.name, "epochs": request.rungs[rung],
            "val_accuracy": cand.accuracy[rung], "val_interval": cand.interval(rung),
            "val_images": cand.val_images, "cost": cand.cost, "params": est.params,
            "mflops": round(est.mflops, 4), "flash_bytes": cand.figures.get("flash"),
            "flash_bytes_estimate": est.flash_bytes, "arena_bytes": cand.figures.get("arena"),
            "arena_bytes_estimate": est.arena_bytes, "latency_ms": cand.figures.get("latency"),
            "architecture": spec.family_entry.summary(spec.arch), "describe": spec.describe(),
            "recipe": spec.recipe.changed(),
            "params_picked": cand.params}


def front_specs(request: TuneRequest, result: dict[str, Any]) -> list[tuple[Spec, list[str]]]:
    """The front's specs (at the fidelity the front was judged at), each with comment lines."""
    out = []
    for member in result["front"]:
        spec = request.space.candidate(*request.space.suggest(_Replay(member["params_picked"])),
                                       epochs=member["epochs"], prefix=request.name)
        note = (f"toolkit tune study {result['study']}, trial {member['trial']}: validation accuracy "
                f"{member['val_accuracy']:.4f} at {member['epochs']} epochs, {request.cost.label} "
                f"{member['cost']:.4g}; budget: {result['budget']}")
        out.append((spec, [note]))
    return out


def write_front(path: Path, request: TuneRequest, result: dict[str, Any]) -> list[str]:
    """Add the front's specs to the user spec file (one atomic replacement); the names added."""
    from toolkit.specs import registry
    from toolkit.specs import user as user_specs

    reserved = [s.name for s in registry.SPECS.values() if s.origin != "user"]
    return user_specs.append(path, front_specs(request, result), reserved=reserved)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
