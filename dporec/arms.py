"""The experiment's stages and arms, each defined once.

A stage is one folder of a run (<output_dir>/<stage>/), made by one script and finished when its marker
file is written last. The main comparison has three: sft, dpo and eval. An arm is what an experiment adds
to it: its stages, how each stage's spec is derived from the stages that finished before it, the model it
adds to the evaluation, its comparisons (with their names and text), the config switch that turns it on
and what that switch needs.

Every consumer iterates over these records: the config schema (experiment.<switch>), run_experiment.py
(which stages run, in which order), the stage scripts (--arm NAME), the evaluation (which models, which
comparisons), the reports (console, report.md, results.json, the aggregate over seeds) and the cost model
(by each stage's kind). Adding an arm is adding a record to ARMS; docs/development.md shows one.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dporec import UserError


@dataclass(frozen=True)
class Stage:
    name: str            # its folder under the run folder, and its name in messages
    kind: str            # "sft", "dpo", "sampling" or "eval": the code that runs it, its cost formula
    marker: str          # the file it writes last: its presence marks the stage finished
    script: str          # the script that runs it alone
    label: str           # how tables name it ("SFT control")
    output: str | None = None  # the file a later stage reads from this one (the sampled pairs)

    def folder(self, output_dir) -> Path:
        return Path(output_dir) / self.name

    def marker_file(self, output_dir) -> Path:
        return self.folder(output_dir) / self.marker


TRAINING_MARKER = "metrics.json"  # what a training stage writes last (dporec.training.metrics)
SFT = Stage("sft", "sft", TRAINING_MARKER, "train_sft.py", "SFT")
DPO = Stage("dpo", "dpo", TRAINING_MARKER, "train_dpo.py", "DPO")
EVAL = Stage("eval", "eval", "results.json", "evaluate_dpo.py", "evaluation")
TRAINING_KINDS = ("sft", "dpo")  # the kinds whose config section ([sft], [dpo]) holds steps and rate


@dataclass(frozen=True)
class StageSpec:
    """What the orchestrator hands a stage beside the user's config: the stage, the adapter it starts from
    and the few settings its arm sets. None: the config's own value. The stage trains with these and
    records them (run_info.json "spec"); the config it saves is the user's, as given."""
    stage: Stage
    init_adapter: str | None = None  # sft: continue it; dpo: the policy and its reference start here
    max_steps: int | None = None
    learning_rate: float | None = None
    train_from: Stage | None = None  # train on that stage's output (all of it), not data.train_file
    settings: tuple = ()             # ((dotted config key, value), ...) other knobs the arm sets
    arm: str | None = None           # the arm it belongs to; None: the main comparison
    resume: bool | str | None = None  # the orchestrator's lifecycle decision; None: the config's resume
    overwrite: bool | None = None    # ... and overwrite

    def config_settings(self, output_dir) -> dict:
        """{dotted key: value} that give the stage's effective config (config.updated applies them)."""
        out = {}
        kind = self.stage.kind
        if self.max_steps is not None:
            out[f"{kind}.max_steps"] = self.max_steps
        if self.learning_rate is not None:
            out[f"{kind}.learning_rate"] = self.learning_rate
        if self.train_from is not None:
            out["data.train_file"] = str(self.train_from.folder(output_dir) / self.train_from.output)
            out["data.max_train_examples"] = None
        out.update(dict(self.settings))
        return out

    def mode(self, cfg: dict) -> tuple:
        """(resume, overwrite) for the stage: the orchestrator's decision where it made one, else the
        config's (the user's --resume / --overwrite)."""
        return (cfg["resume"] if self.resume is None else self.resume,
                cfg["overwrite"] if self.overwrite is None else self.overwrite)

    def record(self, stage_cfg: dict) -> dict:
        """run_info.json's "spec": the stage and the effective settings it ran with (stage_cfg: the config
        with config_settings applied)."""
        out = {"stage": self.stage.name, "kind": self.stage.kind, "arm": self.arm,
               "init_adapter": self.init_adapter, "settings": dict(self.settings)}
        if self.stage.kind in TRAINING_KINDS:
            sc, d = stage_cfg[self.stage.kind], stage_cfg["data"]
            out.update(max_steps=sc["max_steps"], epochs=sc["epochs"], learning_rate=sc["learning_rate"],
                       train_file=d["train_file"], max_train_examples=d["max_train_examples"])
        return out

    def describe(self) -> str:
        """What differs from a stage run from the config alone, for the console ('' when nothing)."""
        parts = [f"from {self.init_adapter}" if self.init_adapter and self.stage.kind == "sft" else "",
                 f"{self.max_steps} steps" if self.max_steps is not None else "",
                 f"learning rate {self.learning_rate:g}" if self.learning_rate is not None else "",
                 f"on {self.train_from.name}/{self.train_from.output}" if self.train_from else "",
                 *(f"{k}={v}" for k, v in self.settings)]
        return ", ".join(p for p in parts if p)


def main_spec(stage: Stage, cfg: dict, done: Finished) -> StageSpec:
    """The spec of a main stage (sft, dpo, eval): everything from the config; DPO with dpo.init=sft starts
    from the run's SFT adapter."""
    if stage is DPO and cfg["dpo"]["init"] == "sft":
        return StageSpec(stage, init_adapter=done.sft_adapter)
    return StageSpec(stage)


def spec_for(stage: Stage, cfg: dict, done: Finished) -> StageSpec:
    """Any stage's spec: a main stage's from the config, an arm's stage derived by its arm."""
    arm = next((a for a in ARMS if stage in a.stages), None)
    return arm.derive(stage, done) if arm else main_spec(stage, cfg, done)


class Finished(Protocol):
    """What an arm's stages are derived from: facts of the stages that finished before them (read from the
    run folder by runs.adapters.FinishedRun, or predicted by the cost model)."""
    output_dir: str
    sft_adapter: str        # the run's SFT adapter (runs.adapters.sft_adapter)
    dpo_steps: int          # the DPO stage's optimizer steps
    dpo_learning_rate: float


@dataclass(frozen=True)
class Comparison:
    key: str                  # its results.json key; the aggregate's is pooled_key
    a: str                    # the baseline side's model (b - a is the difference)
    b: str                    # the challenger's
    names: tuple[str, str]    # how the reports name a and b
    title: str                # its heading in report.md and aggregate.md
    lead: str                 # the console's line before its verdict sentence

    @property
    def pooled_key(self) -> str:
        return "pooled" + self.key.removeprefix("comparison")


MAIN = Comparison("comparison", "sft", "dpo", ("SFT", "DPO"), "SFT vs DPO", "SFT vs DPO")


@dataclass(frozen=True)
class Arm:
    name: str                         # --arm NAME; results.json's "<name>_arm" block when matched_to is set
    switch: str                       # experiment.<switch> turns it on
    help: str                         # that key's help text
    stages: tuple[Stage, ...]         # run in this order, after the main stages
    model: Stage                      # the stage whose adapter the evaluation scores, under its name
    derive: Callable[[Stage, Finished], StageSpec]
    comparisons: tuple[Comparison, ...]
    title: str                        # its report.md section
    about: str                        # the section's first paragraph
    card: str                         # what the model card says the adapter was trained by
    matched_to: Stage | None = None   # report what its model shares with that stage's, setting by setting
    unmatched: Callable[[dict], str] | None = None  # what cannot be matched, for a config
    requires: tuple = ()              # ((dotted key, value, why), ...) the switch needs

    def unmet(self, cfg: dict) -> list[str]:
        """What the config lacks for this arm: one message per `requires` entry it does not meet."""
        out = []
        for key, value, why in self.requires:
            section, leaf = key.split(".")
            if cfg[section][leaf] != value:
                out.append(f"the {self.name} arm {why}, so it needs {key}={value} "
                           f"(got {cfg[section][leaf]!r})")
        return out


# ---------------------------------------------------------------------------------------------
# The compute-matched SFT control: SFT continued for as many steps as DPO took

CONTROL = Stage("sft_control", "sft", TRAINING_MARKER, "train_sft.py", "SFT control")


def _control_spec(stage: Stage, done: Finished) -> StageSpec:
    # batch, accumulation, schedule, warmup, optimizer, training examples and seed come from the shared
    # train and data sections: only the steps and the learning rate are DPO's
    return StageSpec(stage, init_adapter=done.sft_adapter, max_steps=done.dpo_steps,
                     learning_rate=done.dpo_learning_rate, arm="control")


def _control_unmatched(cfg: dict) -> str:
    reference = ("the frozen reference's log-probabilities, computed once before training"
                 if cfg["dpo"]["precompute_ref_log_probs"] else "the frozen reference's forward on both")
    return ("the objective (DPO's preference loss on chosen vs rejected answers vs SFT's likelihood of the "
            "chosen answer) and the compute per example: a DPO step runs the policy on both answers and "
            f"reads {reference}, about twice the forward/backward work of an SFT step")


CONTROL_ARM = Arm(
    name="control", switch="control_arm",
    help="also continue SFT for as many steps as DPO takes: separates 'preference signal' from "
         "'more training'",
    stages=(CONTROL,), model=CONTROL, derive=_control_spec,
    comparisons=(Comparison("comparison_control", CONTROL.name, "dpo", ("SFT control", "DPO"),
                            "DPO vs the compute-matched SFT control",
                            "Compute-matched control (SFT continued for as many steps as DPO) vs DPO:"),),
    title="DPO vs the compute-matched SFT control",
    about="SFT continued from the SFT adapter for as many optimizer steps as DPO took, at DPO's learning "
          "rate: tells \"DPO beats SFT\" apart from \"more training beats less\".",
    card="SFT continued from the run's SFT adapter for as many steps as DPO took (the compute-matched "
         "control arm)",
    matched_to=DPO, unmatched=_control_unmatched)


# ---------------------------------------------------------------------------------------------
# On-policy DPO: DPO from SFT on pairs of the SFT model's own answers, judged by the data

PAIRS = Stage("onpolicy_pairs", "sampling", "summary.json", "sample_onpolicy.py", "on-policy sampling",
              output="pairs.jsonl")
ONPOLICY = Stage("dpo_onpolicy", "dpo", TRAINING_MARKER, "train_dpo.py", "on-policy DPO")


def _onpolicy_spec(stage: Stage, done: Finished) -> StageSpec:
    if stage is PAIRS:
        return StageSpec(stage, init_adapter=done.sft_adapter, arm="onpolicy")
    # the off-policy DPO's steps; beta, learning rate, loss and reference from the same config: only the
    # pairs differ
    return StageSpec(stage, init_adapter=done.sft_adapter, max_steps=done.dpo_steps, train_from=PAIRS,
                     arm="onpolicy")


ONPOLICY_ARM = Arm(
    name="onpolicy", switch="on_policy_arm",
    help="also sample answers from the SFT model, judge them by the ratings and the history "
         "(sample_onpolicy.py), and train DPO from SFT on those pairs with the off-policy DPO's steps, "
         "beta, learning rate and reference: the two DPO arms differ only in their pairs",
    stages=(PAIRS, ONPOLICY), model=ONPOLICY, derive=_onpolicy_spec,
    comparisons=(
        Comparison("comparison_onpolicy", "sft", ONPOLICY.name, ("SFT", "on-policy DPO"),
                   "On-policy DPO vs SFT",
                   "On-policy DPO (pairs from the SFT model's own answers, judged by the data) vs SFT:"),
        Comparison("comparison_onpolicy_vs_dpo", "dpo", ONPOLICY.name, ("off-policy DPO", "on-policy DPO"),
                   "On-policy vs off-policy DPO",
                   "On-policy vs off-policy DPO (the same steps, beta, learning rate and reference; only "
                   "the pairs differ):"),
    ),
    title="On-policy DPO",
    about="DPO from the SFT adapter on pairs of the SFT model's own sampled answers: chosen, a right "
          "decision whose genre claims are all true; rejected, a wrong decision (judged from the user's "
          "ratings and the history, not by a model). The same steps, beta, learning rate and reference as "
          "the off-policy DPO, so the two DPO arms differ only in their pairs. Its pairs hold both option "
          "orders of a training example as two pairs, the off-policy DPO's one pair per example: steps "
          f"are matched, examples are not. Pair counts: {PAIRS.name}/{PAIRS.marker}.",
    card="DPO from the run's SFT adapter on pairs of the SFT model's own sampled answers (the on-policy "
         "arm)",
    requires=(("dpo.init", "sft", "samples from the SFT model and trains DPO from it"),))


ARMS: tuple[Arm, ...] = (CONTROL_ARM, ONPOLICY_ARM)


# ---------------------------------------------------------------------------------------------
# Lookups every consumer uses

def enabled(cfg: dict, arms=None) -> list[Arm]:
    """The arms this config switches on, in ARMS order."""
    return [a for a in (ARMS if arms is None else arms) if cfg["experiment"].get(a.switch)]


def by_name(name: str) -> Arm:
    for a in ARMS:
        if a.name == name:
            return a
    raise UserError(f"unknown arm {name!r}; the arms are {', '.join(a.name for a in ARMS)}")


def stages() -> tuple[Stage, ...]:
    """Every stage a run can have, in the order run_experiment.py runs them."""
    return (SFT, DPO, *(s for a in ARMS for s in a.stages), EVAL)


def stage(name: str) -> Stage:
    for s in stages():
        if s.name == name:
            return s
    raise KeyError(name)


def comparisons(arms=None) -> list[Comparison]:
    """The main comparison, then every arm's, in ARMS order."""
    return [MAIN, *(c for a in (ARMS if arms is None else arms) for c in a.comparisons)]


def arm_of(model: str) -> Arm | None:
    """The arm whose model this is (by the evaluated name), or None."""
    return next((a for a in ARMS if a.model.name == model), None)


@dataclass(frozen=True)
class Predicted:
    """Finished facts as the cost model predicts them, before anything has run."""
    output_dir: str
    sft_adapter: str
    dpo_steps: int
    dpo_learning_rate: float


def spec_to_dict(spec: StageSpec) -> dict:
    """A spec as JSON (what run_experiment.py hands a stage it runs in a child process)."""
    return {"stage": spec.stage.name, "init_adapter": spec.init_adapter, "max_steps": spec.max_steps,
            "learning_rate": spec.learning_rate,
            "train_from": spec.train_from.name if spec.train_from else None,
            "settings": [list(kv) for kv in spec.settings], "arm": spec.arm, "resume": spec.resume,
            "overwrite": spec.overwrite}


def spec_from_dict(d: dict) -> StageSpec:
    return StageSpec(stage(d["stage"]), init_adapter=d["init_adapter"], max_steps=d["max_steps"],
                     learning_rate=d["learning_rate"],
                     train_from=stage(d["train_from"]) if d["train_from"] else None,
                     settings=tuple(tuple(kv) for kv in d["settings"]), arm=d["arm"], resume=d["resume"],
                     overwrite=d["overwrite"])
