"""The pipeline learns: configs/tiny_learn.yaml through the real SFT, DPO (off- and on-policy) and
evaluation stages (4-bit QLoRA, TRL, likelihood scoring in both option orders) moves two-order
accuracy from the base model's level to >= 75% on data where the genre-overlap rule scores ~87%,
and the same run on the same data with the training labels shuffled stays at 50% +- 10.

Either test fails when training or scoring is miswired: a wrong letter or flipped labels would send
the real run below 50%, scoring the wrong token would leave it at chance, and a leak of the answer
into the prompt (or scoring that ignores the model) would lift the shuffled control.
Measured on 2 cores: base 39.3%, SFT 95.3%, DPO 96.7%, on-policy DPO 94.7% (106 position-balanced
pairs of the 114 that 200 sampled prompts gave, a wrong decision or a false claim rejected, none
degenerate); shuffled SFT 42.7%, DPO 50.0%; the genre-overlap rule 86.7% on the same 75 test pairs.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dporec import ROOT, files
from dporec.data import ratings, records, sources, task
from dporec.data.sources import synthetic
from dporec.evaluation import baselines
from dporec.modeling import local_models
from tests.helpers import dpo_main, evaluate_main, experiment_main, sft_main

CONFIG = ROOT / "configs" / "tiny_learn.yaml"


@pytest.fixture(scope="module")
def learn_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, data folder), built as `python scripts/build_learnable.py` does (~1 minute)."""
    return local_models.build_learnable(tmp_path_factory.mktemp("learn"))


def shuffled_labels(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of the train and val files where a random half of the examples name the disliked movie.

    records.swap exchanges the two options (and flips the label, so it still names the liked movie);
    the answer is then set to the other letter, with that option's (true) reasoning. Test pairs and
    side files are copied untouched, so the control is scored on exactly the same pairs.
    """
    rng = random.Random(seed)
    dst.mkdir(parents=True)
    for split in ("train", "val"):
        out = []
        for ex in records.load_examples(src / f"{split}.jsonl"):
            if rng.random() < 0.5:
                ex = records.swap(ex)
                wrong = ex.other
                ex = replace(ex, label=wrong, output=task.answer_text(wrong, ex.reasons[wrong]),
                             reasoning=ex.reasons[wrong])
            out.append(ex)
        files.write_jsonl(dst / f"{split}.jsonl", (records.to_record(e) for e in out))
    for name in ("test.jsonl", ratings.META_FILE, ratings.RATINGS_FILE):
        shutil.copy(src / name, dst / name)
    return dst


def run_pipeline(model: Path, data_dir: Path, out: Path) -> dict:
    argv = ["--config", str(CONFIG), f"model.name={model}", f"output_dir={out}",
            *(f"data.{s}_file={data_dir / f'{s}.jsonl'}" for s in ("train", "val", "test"))]
    for main in (sft_main, dpo_main, evaluate_main):
        assert main(argv) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    acc = {m: r["accuracy"] for m, r in results["models"].items()}
    print(f"two-order accuracy {acc}; genre overlap {results['baselines']['genre_overlap']['accuracy']:.3f}")
    return results


@pytest.fixture(scope="module")
def learned(learn_inputs, tmp_path_factory) -> tuple[dict, Path]:
    """(results.json, run folder) of run_experiment.py on the learnable setting with the on-policy arm:
    SFT, DPO, sampling from SFT, on-policy DPO and the evaluation of all four, in one run."""
    model, data_dir = learn_inputs
    out = tmp_path_factory.mktemp("learned") / "run"
    argv = ["--config", str(CONFIG), f"model.name={model}", f"output_dir={out}",
            *(f"data.{s}_file={data_dir / f'{s}.jsonl'}" for s in ("train", "val", "test")),
            "experiment.on_policy_arm=true"]
    assert experiment_main(argv) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    print(f"two-order accuracy { {m: r['accuracy'] for m, r in results['models'].items()} }")
    return results, out


def test_reasoning_is_judged_for_every_model(learned):
    """The generated answers, judged from the data: SFT's are parseable, right and argue for what they
    chose, its genre claims mostly true; the base model's name no option. Measured on 2 cores (30 pairs x 2
    orders): base 0% parseable; SFT 100% parseable, 95% right, 80% coherent, 50% right and truthful (its
    false claims give the other option a genre it does not have, or name a movie that is neither option);
    DPO 18% and on-policy DPO 27% right and truthful, with 0.28 and 0.05 false claims per answer."""
    results, out = learned
    r = results["reasoning"]
    assert set(r["models"]) == {"base", "sft", "dpo", "dpo_onpolicy"} and r["subset"]["pairs"] == 30
    base, sft = r["models"]["base"], r["models"]["sft"]
    assert base["parseable_rate"] <= 0.2 and base["right_and_truthful_rate"] <= 0.1
    assert sft["parseable_rate"] >= 0.9 and sft["accuracy"] >= 0.8 and sft["coherence_rate"] >= 0.6
    assert sft["right_and_truthful_rate"] >= base["right_and_truthful_rate"] + 0.25
    assert r["reference"]["right_and_truthful_rate"] == 1.0  # the data's own answers
    assert r["comparison"]["measure"] == "right_and_truthful_rate"
    md = (out / "eval" / "report.md").read_text()
    assert "## Reasoning quality (secondary)" in md and "| base | 60 |" in md and "| sft | 60 |" in md
    assert "** (true)" in md and "~~ (false: " in md
    with open(out / "eval" / "generations.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 4 * 60


def test_sft_and_dpo_learn_what_the_genre_rule_knows(learned):
    results, _ = learned
    acc = {m: r["accuracy"] for m, r in results["models"].items()}
    assert results["baselines"]["genre_overlap"]["accuracy"] >= 0.8
    assert acc["base"] <= 0.6  # the pretraining says nothing about which option is better
    assert acc["sft"] >= 0.75 and acc["dpo"] >= 0.75
    assert acc["sft"] >= acc["base"] + 0.25


def test_on_policy_arm_keeps_what_sft_learned(learned):
    """The SFT model's own answers, judged by the data, make real pairs (never chosen == rejected), and DPO
    on them does not break what SFT learned: on-policy DPO is not worse than SFT beyond this test set's
    noise (the upper end of the paired interval of their difference is at or above 0)."""
    results, out = learned
    summary = json.loads((out / "onpolicy_pairs" / "summary.json").read_text())
    print({k: summary[k] for k in ("prompts", "samples", "parse_failures", "pairs_sampled", "pairs",
                                   "prompts_all_right", "prompts_all_wrong", "degenerate_pairs",
                                   "chosen_position_sampled", "longer_is_chosen_rate", "sampled_decisions")})
    assert summary["prompts"] == 2 * 100 and summary["samples"] == summary["prompts"] * 4  # tiny_learn.yaml
    assert summary["degenerate_pairs"] == 0 and summary["pairs"] > 0
    # every prompt either paired or counted as skipped (some lack both)
    assert (summary["pairs_sampled"] + summary["prompts_without_chosen"]
            + summary["prompts_without_rejected"]) >= summary["prompts"]
    # the kept pairs have the chosen answer in A as often as in B, the extra ones dropped and counted
    assert summary["chosen_position"]["A"] == summary["chosen_position"]["B"] == summary["pairs"] / 2
    assert summary["pairs_sampled"] - summary["dropped_for_balance"] == summary["pairs"]
    pairs = records.load_examples(out / "onpolicy_pairs" / "pairs.jsonl")
    assert len(pairs) == summary["pairs"]
    assert all(records.chosen_output(e) != records.rejected_output(e) for e in pairs)
    acc = {m: r["accuracy"] for m, r in results["models"].items()}
    assert set(acc) == {"base", "sft", "dpo", "dpo_onpolicy"}
    c = results["comparison_onpolicy"]
    assert c["names"] == ["SFT", "on-policy DPO"] and c["verdict"] in ("SUPPORTED", "NOT SUPPORTED",
                                                                      "INCONCLUSIVE")
    assert c["ci"][1] >= 0, c["sentence"]
    assert acc["dpo_onpolicy"] >= 0.75
    assert results["comparison_onpolicy_vs_dpo"]["names"] == ["off-policy DPO", "on-policy DPO"]
    arm = json.loads((out / "dpo_onpolicy" / "metrics.json").read_text())
    assert arm["steps"] == json.loads((out / "dpo" / "metrics.json").read_text())["steps"]


def test_shuffled_labels_teach_nothing(learn_inputs, tmp_path):
    model, data_dir = learn_inputs
    shuffled = shuffled_labels(data_dir, tmp_path / "shuffled")
    train = records.load_examples(shuffled / "train.jsonl")
    original = {e.pair_id: e for e in records.load_examples(data_dir / "train.jsonl")}
    kept = sum(e.option(e.label) == original[e.pair_id].option(original[e.pair_id].label) for e in train)
    assert 0.4 <= kept / len(train) <= 0.6  # about half of the answers now name the disliked movie
    models = run_pipeline(model, shuffled, tmp_path / "run")["models"]
    for name in ("sft", "dpo"):
        # at chance: within 50% +- 10, or (75 pairs from 27 users are noisy) an interval that holds 50%;
        # the real run's 89-91% is far outside both
        acc, (lo, hi) = models[name]["accuracy"], models[name]["accuracy_ci"]
        assert 0.4 <= acc <= 0.6 or lo <= 0.5 <= hi, (name, acc, lo, hi)
        assert acc < 0.7, (name, acc)


def test_shared_tastes_data_favour_the_genre_rule(tmp_path):
    folder = synthetic.write_ml1m_shared_tastes(tmp_path / "ml")
    summary = sources.build(str(folder), tmp_path / "d", history_len=synthetic.SHARED_HISTORY_LEN,
                            train_pairs_per_user=3)
    test = records.load_examples(tmp_path / "d" / "test.jsonl")
    assert summary["splits"]["train"]["examples"] >= 500
    assert abs(summary["splits"]["test"]["A"] - summary["splits"]["test"]["B"]) <= 1
    side, why = baselines.find_side(tmp_path / "d" / "train.jsonl")
    acc = {k: sum(v.values()) / len(v) for k, v in baselines.pair_scores(test, side, why).items()
           if isinstance(v, dict)}
    assert 0.8 <= acc["genre_overlap"] <= 0.95  # "~90%", as issue 10 asks (86.7% on these 75 pairs)
    assert 0.35 <= acc["older_year"] <= 0.65
    assert all(len(e.extra["option_a"]["genres"]) == 1 for e in test)


def test_pretraining_texts_carry_no_preference():
    texts = local_models.pretraining_texts(400, seed=3)
    firsts = [t.split("### Response:\n")[1].split("Option ")[1][0] for t in texts]
    # which option is restated first is random: nothing in the text says which option is better
    assert 0.4 <= firsts.count("A") / len(firsts) <= 0.6
    assert all("better" not in t for t in texts)
