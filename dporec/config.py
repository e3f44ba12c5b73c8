"""Config: a typed schema whose defaults are the thesis's settings, and the command line.

Every script takes `--config FILE.yaml` (what differs from the defaults) plus dotted overrides
(`dpo.beta=0.5 seed=3`), parsed as YAML scalars. Unknown keys and wrong types are rejected with the
key's name and the nearest valid key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import errno
import math
import os
import pickle
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dporec import UserError, arms, not_found, read_text
from dporec.data import built, sources, task
from dporec.files import load_yaml


@dataclass(frozen=True)
class Field:
    default: Any
    types: tuple  # accepted Python types; int is accepted where float is
    choices: tuple | None = None
    help: str = ""
    lo: float | None = None        # the smallest valid value (None: unbounded)
    hi: float | None = None        # the largest valid value
    open_lo: bool = False          # lo itself is not valid
    open_hi: bool = False          # hi itself is not valid
    items: tuple | None = None     # a list's valid items
    also: tuple = ()               # values valid outside the range, e.g. -1 for "not set"


def F(default, *types, choices=None, help="", lo=None, hi=None, open_lo=False, open_hi=False, items=None,
      also=()):
    return Field(default, types or (type(default),), choices, help, lo, hi, open_lo, open_hi, items, also)


# TRL 1.14's DPO losses (trl/trainer/dpo_trainer.py): a name outside this list fails only at the first step.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


NONE = type(None)
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


def experiment_section() -> dict:
    """The experiment section: one switch per arm of dporec/arms.py (experiment.control_arm,
    experiment.on_policy_arm, ...), and the launcher of the training stages."""
    return {**{a.switch: F(False, bool, help=a.help) for a in arms.ARMS},
            "launcher": F(None, str, NONE, help="run_experiment.py runs the training stages as child "
                                                "processes under this command, e.g. 'accelerate launch "
                                                "--num_processes 2'; command line only (COMMAND_LINE_ONLY)")}

# Keys whose value is a command the scripts run: taken from the command line only, never from a YAML file
# (a config shared with a thesis, or found in a notebook, must not be able to run a program)
COMMAND_LINE_ONLY = ("experiment.launcher",)

# The schema: every valid key, its default and its type. The defaults are the thesis's settings
# (Llama 3 8B in 4-bit NF4, LoRA r=16, SFT then DPO from the SFT adapter); configs/*.yaml hold only
# what differs from them. Each help says what the knob means and what it trades off.
SCHEMA: dict[str, Any] = {
    "output_dir": F("runs/llama3_8b", str, help="run folder; sft/, dpo/ and eval/ are written under it"),
    "seed": F(42, int, lo=0, hi=SEED_MAX, help="data order, LoRA init, bootstrap; run_experiment.py repeats "
                                                "over `seeds`"),
    "seeds": F(None, list, NONE, lo=1, help="run_experiment.py: repeat training+evaluation over these seeds"),
    "overwrite": F(False, bool, help="replace a finished run folder instead of refusing"),
    "resume": F(False, bool, str, choices=(False, True, "auto"),
                help="true: continue from the last checkpoint in the run folder; auto: continue one if "
                     "there is one, else start fresh, and leave a finished stage as it is (rerunning a "
                     "notebook cell after a disconnect is then all it takes)"),
    "model": {
        "name": F("unsloth/llama-3-8b-bnb-4bit", str,
                  help="hub id or local folder; the default is stored in 4-bit (a third of the download)"),
        "backend": F("auto", str, choices=("auto", "unsloth", "hf"),
                     help="auto: Unsloth on a CUDA GPU when installed (faster, leaner), else transformers"),
        "load_in_4bit": F(True, bool, help="NF4 + double quantization: ~0.5 byte per weight instead of 2"),
        "dtype": F("auto", str, choices=("auto", "bfloat16", "float16", "float32"),
                   help="auto: bf16 on Ampere+ (RTX 3090, A100), fp16 on T4/V100, fp32 on CPU"),
        "max_seq_length": F(512, int, lo=64, help="prompts are ~250 tokens; longer costs memory for nothing"),
        "allow_cpu": F(False, bool, help="with backend=hf: run a GPU-sized model (>= 2B parameters) on a "
                                         "CPU anyway, at days per epoch; otherwise every script refuses it"),
    },
    "lora": {
        "r": F(16, int, lo=1, hi=1024, help="adapter rank: more capacity and memory; 16 is the thesis value"),
        "alpha": F(16, int, lo=1, help="scale = alpha / r"),
        "dropout": F(0.0, float, lo=0, hi=1, open_hi=True, help="0 lets Unsloth use its fast path"),
        "target_modules": F(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                            list, lo=1, help="the projections LoRA adapts (at least one)"),
    },
    "data": {
        "source": F(None, str, NONE, help="run_experiment.py builds the three files from this when missing: "
                                          + sources.forms()),
        "negatives": F(built.DEFAULTS["negatives"], str, choices=("disliked", "matched"),
                       help="how run_experiment.py picks each pair's other movie when it builds from a "
                            "source: disliked (any movie the user rated <= dislike_threshold: general appeal "
                            "alone answers most pairs) or matched (a disliked movie as popular and as well "
                            "rated as the liked one: only personal taste answers it)"),
        "split": F(built.DEFAULTS["split"], str, choices=built.SPLIT_KINDS,
                   help="users: users drawn at random into train/val/test, each pair's target at any time "
                        "(the thesis); temporal: the same user-disjoint splits, and a time cut as well: "
                        "training pairs before the test period, val/test pairs in it (the models then "
                        "know no later ratings than a deployed recommender would; fewer pairs)"),
        "train_pairs_per_user": F(built.DEFAULTS["train_pairs_per_user"], int, lo=1,
                                  help="pairs per training user when built from a source: 1, "
                                                     "as the thesis trained (one line per "
                                                     "user); more multiplies training time"),
        "eval_pairs_per_user": F(built.DEFAULTS["eval_pairs_per_user"], int, lo=1,
                                 help="pairs per validation or test user: 3 gives ML-1M's "
                                                    "604 test users ~1,570 test pairs, the power the "
                                                    "verdict needs (docs/statistics.md)"),
        "train_file": F("data/generated/ml1m/train.jsonl", str),
        "val_file": F("data/generated/ml1m/val.jsonl", str),
        "test_file": F("data/generated/ml1m/test.jsonl", str),
        "prompt_format": F("alpaca", str, choices=task.PROMPT_FORMATS,
                           help="'### Instruction/Input/Response' (the thesis) or the tokenizer's chat "
                                "template (instruct models)"),
        "max_train_examples": F(None, int, NONE, lo=1, help="null = all"),
        "max_val_examples": F(200, int, NONE, lo=1,
                              help="validation during training "
                                   "costs time; 200 pairs show trends"),
        "max_test_examples": F(None, int, NONE, lo=1,
                               help="null = all: ~1,200-2,900 pairs are needed to detect "
                                    "+2 points (docs/statistics.md)"),
        "history_len": F(built.DEFAULTS["history_len"], int, lo=1,
                         help="liked movies in each prompt's history when built from a "
                                            "source (the thesis shows 5): longer prompts cost time and "
                                            "memory, shorter ones tell the model less"),
        "val_fraction": F(built.DEFAULTS["val_fraction"], float, lo=0, hi=1, open_hi=True,
                          help="share of users held out for validation when built from a source"),
        "test_fraction": F(built.DEFAULTS["test_fraction"], float, lo=0, hi=1, open_hi=True,
                           help="share of users held out for the test when built from a source: more "
                                "test pairs give the verdict more power, fewer leave more to train on"),
        "max_users": F(built.DEFAULTS["max_users"], int, NONE, lo=1,
                       help="users drawn at random (seeded) from the source before pairs are built; null: "
                            "all. ML-25M and ML-32M have 162k-201k users, far more than a run trains on: "
                            "6040 builds an ML-1M-size set from them; more users cost training time in "
                            "proportion"),
        "like_threshold": F(built.DEFAULTS["like_threshold"], float, lo=built.STARS[0], hi=built.STARS[1],
                            help="stars from which a rating counts as liked (targets, histories, candidate "
                                 "sets' hit@1, the baselines): higher keeps fewer, surer likes"),
        "dislike_threshold": F(built.DEFAULTS["dislike_threshold"], float, lo=built.STARS[0],
                               hi=built.STARS[1],
                               help="stars up to which a rating counts as disliked (the negatives); between "
                                    "the two thresholds a rating is neither (half stars: 2.5-3.5)"),
        "ranking_candidates": F(built.DEFAULTS["ranking_candidates"], int, lo=2, also=(0,),
                                help="movies per test user in the candidate sets run_experiment.py "
                                     "builds (more: a finer ranking, N(N-1) scored questions)"),
        "ranking_file": F(None, str, NONE, help="candidate sets for eval.ranking; default: "
                                                "ranking_test.jsonl beside test_file"),
    },
    "train": {  # shared by the SFT and DPO stages
        "batch_size": F(8, int, lo=1,
                        help="examples (DPO: pairs) per forward; the thesis's effective batch of 8 in one "
                             "micro-batch keeps the GPU busy (the thesis ran 1 x 8: the same optimizer steps "
                             "and loss); lower it and raise grad_accum if memory runs out"),
        "grad_accum": F(1, int, lo=1, help="effective batch = batch_size * grad_accum (thesis: 8)"),
        "gradient_checkpointing": F(True, bool, help="recompute activations: slower steps, much less memory"),
        "optim": F("adamw_8bit", str, help="8-bit Adam states (bitsandbytes, GPU only; adamw_torch on CPU)"),
        "weight_decay": F(0.0, float, lo=0),
        "warmup_ratio": F(0.03, float, lo=0, hi=1, open_hi=True,
                          help="a fraction of the run's optimizer steps"),
        "lr_scheduler": F("linear", str),
        "max_grad_norm": F(1.0, float, lo=0),
        "logging_steps": F(10, int, lo=1),
        "eval_steps": F(100, int, lo=1,
                        help="validation loss (and DPO reward accuracy) every N optimizer steps"),
        "save_steps": F(100, int, lo=1,
                        help="checkpoints for --resume; each holds the adapter and optimizer"),
        "save_total_limit": F(2, int, lo=1),
        "report_to": F("none", str, list, help="loggers: none, tensorboard, wandb, trackio (or a list of "
                                               "them; the package must be installed)"),
    },
    "sft": {
        "learning_rate": F(2e-4, float, lo=0, open_lo=True, help="thesis value; standard for QLoRA SFT"),
        "epochs": F(1.0, float, lo=0, open_lo=True),
        "max_steps": F(-1, int, lo=1, also=(-1,), help="> 0 overrides epochs; -1: epochs decide"),
    },
    "dpo": {
        "init": F("sft", str, choices=("sft", "base"),
                  help="sft: continue the SFT adapter, reference = frozen SFT model (S-DPO, Zephyr); "
                       "base: fresh LoRA, reference = base model. Different experiments"),
        "sft_adapter": F(None, str, NONE, help="the run's SFT adapter, when it was trained elsewhere: DPO "
                                               "starts from it, the evaluation scores it as 'sft', the arms "
                                               "build on it, and run_experiment.py trains no SFT of its own. "
                                               "Default: <output_dir>/sft"),
        "beta": F(0.1, float, lo=0, open_lo=True,
                  help="thesis value; recommendation DPO work (S-DPO, DMPO) uses 1: a larger "
                       "beta keeps the policy nearer the reference "
                       "and resists likelihood displacement"),
        "loss_type": F(["sigmoid"], list, items=DPO_LOSSES,
                       help="[sigmoid, sft] adds an NLL term on the chosen answer "
                            "(RPO), the remedy when logps/chosen falls; also ipo"),
        "loss_weights": F(None, list, NONE, help="e.g. [1.0, 1.0] with [sigmoid, sft]"),
        "learning_rate": F(5e-5, float, lo=0, open_lo=True,
                           help="thesis value; LoRA DPO usually uses 5e-6..1e-5 (higher "
                                "rates displace likelihood)"),
        "epochs": F(3.0, float, lo=0, open_lo=True,
                    help="thesis value; also 3x more training than SFT's 1 epoch: compare with "
                         "the compute-matched control arm"),
        "max_steps": F(-1, int, lo=1, also=(-1,)),
        "precompute_ref_log_probs": F(True, bool, help="one reference pass over the data before training "
                                                       "instead of a reference forward in every step of "
                                                       "every epoch (the same numbers: "
                                                       "the reference is frozen)"),
        "prefix_sharing": F(True, bool, help="run each pair's prompt once for chosen and rejected (a 4D "
                                             "attention mask; ~35% fewer DPO tokens, the same loss and "
                                             "gradients). Needs the hf backend: Unsloth drops custom masks "
                                             "in training, so with model.backend=auto "
                                             "DPO runs on hf; false: DPO under Unsloth"),
    },
    "eval": {
        "models": F(["base", "sft", "dpo"], list, help="base = zero-shot, no adapter"),
        "adapters": F({}, dict, help="extra name: adapter-path pairs to evaluate"),
        "batch_size": F(16, int, lo=1,
                        help="pairs scored per padded batch; lower it if evaluation runs out of memory"),
        "full_answer": F(False, bool, help="also score both complete answers (reasoning and EOS: what DPO "
                                           "trains) in both orders, a secondary table; ~2.5x the scoring "
                                           "cost of the decision alone, the measure"),
        "generate": F(True, bool, help="generate every model's greedy answers in both orders and judge "
                                       "them from the data: reasoning quality (parseable, coherent, true "
                                       "genre claims), the thesis's third metric; the slowest part of "
                                       "an evaluation (sequential decoding), false skips it"),
        "reasoning_pairs": F(None, int, NONE, lo=1,
                             help="generate and judge this many test pairs only (a seeded sample, the same "
                                  "for every model and training seed); null: all of them. The thesis run's "
                                  "1,572 pairs are predicted at ~0.5 h of its ~3.2 h on an RTX 3090; 300 "
                                  "take ~0.1 h with an interval about 2.3x as wide"),
        "max_new_tokens": F(96, int, lo=1, help="the longest generated answer: a decision with the "
                                                "builder's reasoning is ~50-80 tokens; generation stops at "
                                                "EOS, so this bounds the time of the longest answer only"),
        "stability": F(False, bool, help="also score with the base in 16-bit and report the 4-bit vs "
                                         "16-bit agreement (needs 16-bit weights)"),
        "margin_points": F(2.0, float, lo=0,
                           help="the practical margin of the verdict, in points of two-order "
                                "accuracy: the thesis asks whether DPO is better by 2 points"),
        "personal_task": F(True, bool, help="also score the personal task's test pairs (test_matched.jsonl, "
                                            "which the builder writes beside the default task's splits: "
                                            "the same test users, general appeal matched away) for a second "
                                            "verdict; about one more scoring pass per model"),
        "ranking": F(True, bool, help="also rank N rated candidates per test user from all their pairs "
                                      "(Kendall tau-b, NDCG@3, hit@1): the second verdict line"),
        "ranking_max_users": F(150, int, NONE, lo=1,
                               help="rank this many candidate sets only, a seeded sample (the same "
                                    "users for every training seed): each costs N(N-1) scored "
                                    "questions per model; fewer users, a wider ranking interval "
                                    "(null: all)"),
        "ranking_margin": F(0.04, float, lo=0,
                            help="the practical margin of the ranking verdict, in Kendall "
                                 "tau-b: +2 points of pairwise accuracy is +0.04 tau"),
        "bootstrap_samples": F(2000, int, lo=100, help="resamples of each model's own accuracy interval"),
        "alpha": F(0.05, float, lo=0, hi=0.5, open_lo=True, help="1 - the intervals' confidence level"),
    },
    "health": {  # dporec/training/health.py: warnings in metrics.json, the report and the console
        "max_chosen_logp_drop": F(5.0, float, lo=0, open_lo=True,
                                  help="DPO: warn when logps/chosen falls this many nats below "
                                       "its first value (likelihood "
                                       "displacement); lower catches it sooner"),
        "min_eval_reward_accuracy": F(0.55, float, lo=0, hi=1,
                                      help="DPO: warn when the last eval rewards/accuracies is "
                                           "below (near 0.5 = nothing learned)"),
        "max_eval_loss_rise": F(0.10, float, lo=0,
                                help="SFT: warn when the last eval loss is this fraction above "
                                     "its minimum (over-fitting)"),
    },
    "experiment": experiment_section(),
    "onpolicy": {  # sample_onpolicy.py: preference pairs from the SFT model's own answers
        "samples_per_prompt": F(4, int, lo=2, help="answers sampled per training prompt and option order: "
                                                   "more finds a right and a wrong answer for more prompts, "
                                                   "at proportionally more generation time"),
        "temperature": F(0.9, float, lo=0, open_lo=True,
                         help="sampling temperature: higher gives more varied answers (more prompts "
                              "with both a right and a wrong one) and more malformed ones"),
        "top_p": F(0.95, float, lo=0, hi=1, open_lo=True, help="nucleus sampling: the smallest set of "
                                                               "tokens with this much probability"),
        "max_new_tokens": F(96, int, lo=8, help="an answer with its reasoning is ~50 tokens; longer "
                                                "costs generation time, shorter cuts reasoning off"),
        "batch_size": F(8, int, lo=1, help="prompts per generate call (each with samples_per_prompt "
                                           "answers); lower it if sampling runs out of memory"),
        "rejected": F("wrong_decision", str, choices=("wrong_decision", "wrong_decision_or_false_claims"),
                      help="which sampled answers can be rejected: the wrong decision only, or also a "
                           "right decision whose reasoning makes a false genre claim"),
        "balance_positions": F(True, bool, help="keep as many pairs with the chosen answer in position A "
                                                "as in B, dropping the majority's extra pairs: a model "
                                                "that errs more in one order would otherwise teach DPO "
                                                "a position"),
        "max_prompts": F(None, int, NONE, lo=1, help="sample for the first this many training examples "
                                                     "only (each in both orders); null: all"),
    },
}


def _is_section(v) -> bool:
    return isinstance(v, dict)


def defaults(schema: dict = SCHEMA) -> dict:
    return {k: defaults(v) if _is_section(v) else copy.deepcopy(v.default) for k, v in schema.items()}


def _all_keys(schema: dict = SCHEMA, prefix: str = "") -> list[str]:
    out = []
    for k, v in schema.items():
        out += _all_keys(v, f"{prefix}{k}.") if _is_section(v) else [f"{prefix}{k}"]
    return out


# Keys earlier versions had, and what does their job now
RETIRED = {
    "sft.run_name": "the stages' folders are fixed (sft/, and each arm's: dporec/arms.py); set output_dir",
    "sft.init_adapter": "the compute-matched control continues the run's SFT adapter: "
                        "python train_sft.py --config FILE --arm control",
    "dpo.run_name": "the on-policy DPO stage trains into dpo_onpolicy/: python train_dpo.py --config FILE "
                    "--arm onpolicy",
}


def _unknown(key: str, where: str) -> UserError:
    if key in RETIRED:
        return UserError(f"{where}: '{key}' is no longer a config key: {RETIRED[key]}")
    near = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return UserError(f"{where}: unknown config key '{key}'{hint}")


def _check_value(key: str, field: Field, value, where: str):
    types = field.types
    if float in types and isinstance(value, str):
        try:  # PyYAML reads '1e-4' (no decimal point) as a string
            value = float(value)
        except ValueError:
            pass
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join("null" if t is NONE else t.__name__ for t in types)
        raise UserError(f"{where}: '{key}' must be {names}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # .inf trains to NaN, .nan compares to nothing
        raise UserError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if field.choices and value not in field.choices:
        raise UserError(f"{where}: '{key}' must be one of {list(field.choices)}, got {value!r}")
    if isinstance(value, list) and field.lo is not None and len(value) < field.lo:
        raise UserError(f"{where}: '{key}' must list at least {field.lo:g} item(s), got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in field.also:
        problem = _out_of_range(field, value)
        if problem:
            raise UserError(f"{where}: '{key}' must be {problem}, got {value!r}")
    if field.items is not None and isinstance(value, list):
        bad = [v for v in value if v not in field.items]
        if bad or not value:
            raise UserError(f"{where}: '{key}' must be a non-empty list of {list(field.items)}, "
                            f"got {value!r}")
    return value


def _out_of_range(field: Field, value) -> str | None:
    """What the value must be, when it is outside the field's range."""
    lo_ok = field.lo is None or (value > field.lo if field.open_lo else value >= field.lo)
    hi_ok = field.hi is None or (value < field.hi if field.open_hi else value <= field.hi)
    if lo_ok and hi_ok:
        return None
    def num(x):  # an integer bound in full (a seed's 4294967295), a float one short
        return str(x) if isinstance(x, int) else f"{x:g}"
    parts = []
    if field.lo is not None:
        parts.append(f"{'>' if field.open_lo else '>='} {num(field.lo)}")
    if field.hi is not None:
        parts.append(f"{'<' if field.open_hi else '<='} {num(field.hi)}")
    extra = "".join(f" or {a}" for a in field.also)
    return " and ".join(parts) + extra


def _merge(cfg: dict, data: dict, schema: dict, where: str, prefix: str = "", recorded: bool = False):
    if not isinstance(data, dict):
        raise UserError(f"{where}: '{prefix.rstrip('.') or '<top>'}' must be a mapping of keys")
    for key, value in data.items():
        full = f"{prefix}{key}"
        if recorded and full in RETIRED:
            continue  # what an earlier version recorded: the stage's run_info.json says what it did
        if key not in schema:
            raise _unknown(full, where)
        if full in COMMAND_LINE_ONLY and value is not None:
            if recorded:
                continue  # a run's own record says what ran; reading it back launches nothing
            raise UserError(f"{where}: '{full}' runs a command, so it is taken from the command line only, "
                            f"never from a config file: remove it here and give it as an override "
                            f"(\"{full}={value}\")")
        if _is_section(schema[key]):
            # an empty section (`sft:`) is no settings; `model: 0` is not a section
            _merge(cfg[key], {} if value is None else value, schema[key], where, f"{full}.", recorded)
        else:
            cfg[key] = _check_value(full, schema[key], value, where)


def _check_together(cfg: dict, where: str) -> None:
    """Every rule that ties two keys together, checked wherever a config is made or changed."""
    d = cfg["dpo"]
    weights = d["loss_weights"]
    if weights is not None:
        numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
        if len(weights) != len(d["loss_type"]) or not numbers:
            raise UserError(f"{where}: 'dpo.loss_weights' must hold one number >= 0 per dpo.loss_type entry "
                            f"({d['loss_type']}), got {d['loss_weights']!r}")
    for arm in arms.enabled(cfg):
        for problem in arm.unmet(cfg):
            raise UserError(f"{where}: 'experiment.{arm.switch}': {problem}")
    seeds = cfg["seeds"]
    if seeds is not None and (len(set(map(str, seeds))) != len(seeds) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= SEED_MAX for x in seeds)):
        raise UserError(f"{where}: 'seeds' must be distinct integers from 0 to {SEED_MAX}, got {seeds}")
    out = str(cfg["output_dir"]).strip()
    if not out:
        raise UserError(f"{where}: 'output_dir' must name a folder, got {cfg['output_dir']!r}")
    # ~ and $VARS as a shell would expand them: a folder literally named '~' is never what was meant
    cfg["output_dir"] = os.path.expandvars(os.path.expanduser(out))
    if "$" in cfg["output_dir"]:
        raise UserError(f"{where}: 'output_dir' {out!r} names an environment variable that is not set")
    if cfg["resume"] and cfg["overwrite"]:
        raise UserError("--resume and --overwrite contradict each other: --resume continues an unfinished "
                        "run, --overwrite deletes it and starts over; pass one of them")
    dd = cfg["data"]
    if dd["val_fraction"] + dd["test_fraction"] >= 1:
        raise UserError(f"{where}: 'data.val_fraction' + 'data.test_fraction' must be below 1, got "
                        f"{dd['val_fraction']} + {dd['test_fraction']}")
    if dd["dislike_threshold"] >= dd["like_threshold"]:
        raise UserError(f"{where}: 'data.dislike_threshold' ({dd['dislike_threshold']:g}) must be below "
                        f"'data.like_threshold' ({dd['like_threshold']:g}): no rating can be both")


def set_key(cfg: dict, dotted: str, value, where: str = "override"):
    """Set one dotted key, validated against the schema."""
    parts = dotted.split(".")
    schema, node = SCHEMA, cfg
    for p in parts[:-1]:
        if p not in schema or not _is_section(schema[p]):
            raise _unknown(dotted, where)
        schema, node = schema[p], node[p]
    leaf = parts[-1]
    if leaf not in schema or _is_section(schema[leaf]):
        raise _unknown(dotted, where)
    node[leaf] = _check_value(dotted, schema[leaf], value, where)


def updated(cfg: dict, settings: dict) -> dict:
    """A copy of `cfg` with {dotted key: value} set, each validated against the schema."""
    new = copy.deepcopy(cfg)
    for key, value in settings.items():
        set_key(new, key, value, where=f"setting {key}")
    _check_together(new, "settings")
    return new


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), recorded: bool = False) -> dict:
    """Defaults, then the YAML file, then `KEY=VALUE` overrides; everything validated. recorded: the file
    is a config.yaml a stage wrote (as is every one with a run_info.json beside it), whose RETIRED keys
    (written by an earlier version) are passed over."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        recorded = recorded or (path.parent / "run_info.json").is_file()
        if not path.exists():
            raise UserError(not_found(path, "config file"))
        data = load_yaml(read_text(path), path)  # a key given twice is refused, not silently replaced
        _merge(cfg, {} if data is None else data, SCHEMA, str(path), recorded=recorded)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like KEY=VALUE (e.g. dpo.beta=0.5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_key(cfg, key.strip(), value, where=f"override '{item}'")
    _check_together(cfg, str(path) if path is not None else "overrides")
    return cfg


def parse_args(description: str, argv: list[str] | None = None, extra: Callable | None = None):
    """The common CLI: --config FILE, --resume, --overwrite, then KEY=VALUE overrides.

    Returns (args, cfg). `extra(parser)` may add script-specific flags. --resume and --overwrite are the
    config keys resume=true and overwrite=true, checked with the rest.
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--resume", action="store_true", help="same as resume=true")
    p.add_argument("--overwrite", action="store_true", help="same as overwrite=true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. dpo.beta=0.5 seed=3")
    if extra:
        extra(p)
    args = p.parse_intermixed_args(argv)  # flags may come after KEY=VALUE overrides
    flags = [f"{k}=true" for k in ("resume", "overwrite") if getattr(args, k)]
    return args, load_config(args.config, [*args.overrides, *flags])


def save_config(cfg: dict, path: str | os.PathLike) -> Path:
    """Write a resolved config as YAML that load_config reads back unchanged."""
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# Operating-system errors a user can act on, and what to do about each (anything else keeps its traceback)
OS_ADVICE = {errno.ENOSPC: "the disk is full: free space (a Llama 3 8B run needs ~25 GB), then rerun (with "
                           "--resume for a training stage)",
             errno.EDQUOT: "the disk quota is used up: free space, then rerun (with --resume for training)",
             errno.EROFS: "the file system is read-only: choose a writable output_dir",
             errno.EACCES: "permission denied: choose a folder you may write, or fix its permissions"}


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(), turning UserError (and an operating-system error a user can act on) into a
    one-line message and exit status 2; Ctrl-C and SIGTERM say what can be resumed (130, 143)."""
    terminated = []

    def on_sigterm(signum, frame):  # a job scheduler's stop: the same resume advice as Ctrl-C
        terminated.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (a notebook's worker): leave the default
        previous = None
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # the stage that was running says what can be resumed
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(143 if terminated else 130)
    except OSError as e:
        if e.errno not in OS_ADVICE:
            raise
        print(f"error: {e.filename or ''}{': ' if e.filename else ''}{OS_ADVICE[e.errno]} ({e.strerror})",
              file=sys.stderr)
        sys.exit(2)
    except pickle.UnpicklingError:  # torch refused a pickled file; its own message advises the unsafe way
        print("error: a checkpoint or adapter file holds pickled Python objects, which are refused because "
              "loading them could run code: use files saved as safetensors by a run you trust, or delete "
              "that checkpoint and resume from an earlier one", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code or 0)
