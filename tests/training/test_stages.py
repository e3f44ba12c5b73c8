"""train_sft.py / train_dpo.py on the tiny random Llama in real NF4 4-bit (bitsandbytes CPU kernels).

One SFT run and two DPO runs (from the SFT adapter, from the base) are shared by module-scoped
fixtures; each is a few seconds. Nothing here mocks the ML stack: main() is called in-process with
configs/tiny.yaml pointed at the synthetic data and the tiny model.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dporec import ROOT, UserError, files
from dporec.config import parse_args
from dporec.data import records
from dporec.training import arguments, health, stages
from dporec.training import metrics as run_metrics
from tests.helpers import TINY_CONFIG, tiny_overrides


def run(stage, tiny_data, tiny_model, out, *extra, callbacks=()):
    """A training stage (stages.run_sft / run_dpo) with the command line train_sft.py / train_dpo.py takes."""
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out), *extra]
    assert stage(parse_args("test", argv)[1], callbacks=callbacks) == 0
    return Path(out)


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def metrics(stage_folder: Path) -> dict:
    return json.loads((Path(stage_folder) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sft_run(tiny_data, tiny_model, tmp_path_factory) -> Path:
    return run(stages.run_sft, tiny_data, tiny_model, tmp_path_factory.mktemp("sft_run"))


@pytest.fixture(scope="module")
def dpo_from_sft(sft_run, tiny_data, tiny_model) -> Path:
    return run(stages.run_dpo, tiny_data, tiny_model, sft_run, "dpo.init=sft")


@pytest.fixture(scope="module")
def dpo_from_base(tiny_data, tiny_model, tmp_path_factory) -> Path:
    return run(stages.run_dpo, tiny_data, tiny_model, tmp_path_factory.mktemp("dpo_base"), "dpo.init=base")


def health_thresholds() -> dict:
    from dporec.config import load_config
    return load_config(TINY_CONFIG)["health"]


def fresh_4bit_base(tiny_model):
    from dporec.config import load_config
    from dporec.modeling.backends import load_base
    cfg = load_config(TINY_CONFIG, [f"model.name={tiny_model}"])
    return load_base(cfg, "hf")


# ---------------------------------------------------------------------------------------------
# SFT

def test_sft_lowers_loss_and_moves_lora(sft_run, tiny_model):
    m = metrics(sft_run / "sft")
    # what a user takes home besides the weights: curves and a model card naming base, stage and numbers
    assert (sft_run / "sft" / "training_curves.png").stat().st_size > 10_000
    card = (sft_run / "sft" / "README.md").read_text()
    assert "[None]" not in card and f"SFT of {tiny_model}" in card
    assert f"final validation loss: {m['final_eval']['eval_loss']:.4f}" in card
    assert m["steps"] == 8 and m["backend"] == "hf"
    assert m["health"]["observed"]["eval_loss_last"] == m["final_eval"]["eval_loss"]
    assert m["initial_eval"]["step"] == 0
    assert m["final_eval"]["eval_loss"] < m["initial_eval"]["eval_loss"]
    losses = [h["loss"] for h in m["train_history"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    # lora_B starts at zero: any non-zero entry was put there by training
    b = {k: v for k, v in adapter_weights(sft_run / "sft").items() if "lora_B" in k}
    assert b and all(v.abs().max() > 0 for v in b.values())
    for key in ("tokens_per_second", "peak_memory_mb", "wall_time_s", "train_runtime_s"):
        assert m[key] > 0, key
    # transformers' own count (checkpointed; under Unsloth the only one) agrees with TRL's num_tokens
    assert all(h["num_input_tokens_seen"] > 0 for h in m["train_history"])
    assert m["tokens_source"] == "num_input_tokens_seen"
    assert m["train_history"][-1]["num_tokens"] == m["tokens"]  # both count non-padding tokens
    assert m["peak_memory_kind"] == ("cuda max_memory_allocated" if torch.cuda.is_available()
                                     else "process peak RSS")
    info = json.loads((sft_run / "sft" / "run_info.json").read_text())
    assert info["backend"] == "hf" and info["stage"] == "sft"
    assert (sft_run / "sft" / "config.yaml").is_file() and (sft_run / "sft" / "tokenizer.json").is_file()
    assert (sft_run / "sft" / "checkpoint-4").is_dir()


def test_sft_masks_prompt_and_trains_eos(tiny_data, tiny_model, tmp_path):
    from trl import SFTTrainer

    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path))
    model, tok = load_for_training(cfg, "hf")
    exs = records.load_examples(tiny_data / "train.jsonl", 2)
    rows = records.to_sft_rows(exs, "alpaca", tok)
    trainer = SFTTrainer(model=model, args=arguments.sft_config(cfg, tmp_path, "hf"),
                         train_dataset=stages.to_dataset(rows), eval_dataset=stages.to_dataset(rows),
                         processing_class=tok)
    # the trainer's own tokenized rows through its own collator, in order
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for row, ids, labels, attn in zip(rows, batch["input_ids"], batch["labels"], batch["attention_mask"]):
        ids, labels = ids[attn.bool()].tolist(), labels[attn.bool()].tolist()
        n_prompt = len(tok(row["prompt"])["input_ids"])
        assert tok.decode(ids[:n_prompt]) == row["prompt"]
        assert all(x == -100 for x in labels[:n_prompt]), "prompt tokens must not be trained"
        trained = labels[n_prompt:]
        assert trained and all(x != -100 for x in trained)
        assert trained[-1] == tok.eos_token_id, "EOS must end the trained completion"
        assert tok.decode(trained[:-1]) == row["completion"]


# ---------------------------------------------------------------------------------------------
# DPO

def _assert_reloads(folder: Path, tiny_model):
    from peft import PeftModel
    base, tok = fresh_4bit_base(tiny_model)
    model = PeftModel.from_pretrained(base, str(folder))
    saved = adapter_weights(folder)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for k, v in saved.items():
        assert torch.equal(loaded[k.replace(".weight", ".default.weight")].to(v.dtype), v), k
    ids = tok("### Response:\n", return_tensors="pt")
    assert torch.isfinite(model(**ids).logits).all()


@pytest.mark.parametrize("which", ["sft", "base"])
def test_dpo_runs_reference_frozen_and_equal_at_init(which, request, tiny_model, sft_run):
    root = request.getfixturevalue(f"dpo_from_{which}")
    m = metrics(root / "dpo")
    info = json.loads((root / "dpo" / "run_info.json").read_text())
    ref = stages.REFERENCE_SFT if which == "sft" else stages.REFERENCE_BASE
    assert m["reference_model"] == info["reference_model"] == ref and m["init"] == which
    # policy == reference before the first update: every reward is 0 at the step-0 evaluation, exactly:
    # TRL casts the trainable adapter of a 4-bit model to bf16 after copying it into 'ref' in fp32, and
    # the stage copies 'ref' back (compat.policy_from_reference)
    init = m["initial_eval"]
    assert init["step"] == 0
    assert init["eval_rewards/chosen"] == 0.0 and init["eval_rewards/rejected"] == 0.0
    # ... and training moved the policy away from it (rewards no longer 0)
    final = m["final_eval"]
    assert abs(final["eval_rewards/chosen"]) > 1e-4
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        assert key in m["final_train_metrics"] and f"eval_{key}" in final, key
    assert all(math.isfinite(h["loss"]) for h in m["train_history"])
    # the health monitor read the same history: its verdict on reward accuracy follows the number
    assert set(m["health"]) == {"ok", "warnings", "observed"}
    low = final["eval_rewards/accuracies"] < 0.55
    assert low == ("low_reward_accuracy" in [w["code"] for w in m["health"]["warnings"]])
    assert m["health"] == json.loads(json.dumps(health.check_dpo(
        m["train_history"], m["eval_history"], health_thresholds(), warmup_steps=0)))
    card = (root / "dpo" / "README.md").read_text()
    assert f"DPO of {tiny_model}" in card and ref in card and "reward accuracy" in card
    assert (root / "dpo" / "training_curves.png").stat().st_size > 10_000

    policy, frozen = adapter_weights(root / "dpo"), adapter_weights(root / "dpo" / "ref")
    if which == "sft":
        # the reference is the SFT adapter, untouched by DPO
        sft = adapter_weights(sft_run / "sft")
        assert frozen.keys() == sft.keys()
        assert all(torch.equal(frozen[k].float(), sft[k].float()) for k in sft)
        assert any(not torch.equal(policy[k].float(), sft[k].float()) for k in sft)
    else:
        # a frozen copy of a fresh LoRA: lora_B stays zero, so the reference is the base model
        assert all(v.abs().max() == 0 for k, v in frozen.items() if "lora_B" in k)
        assert any(v.abs().max() > 0 for k, v in policy.items() if "lora_B" in k)
    _assert_reloads(root / "dpo", tiny_model)


def test_dpo_from_base_leaves_base_model_files_unchanged(dpo_from_base, tiny_model):
    digest = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    saved = adapter_weights(dpo_from_base / "dpo")
    assert saved and all("lora_" in k for k in saved)  # only the adapter is written
    assert digest == hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()


def test_dpo_loss_matches_formula_through_trl(tiny_data, tiny_model, tmp_path):
    """A worked example of the sigmoid DPO loss through DPOTrainer's own loss code (TRL 1.14 has no standalone
    loss function: the sigmoid loss is computed inside DPOTrainer._compute_loss from the policy's
    logits and the reference log-probs). A two-token 'policy' whose logits are log-probabilities
    makes the summed completion log-probs exactly -2.0 (chosen) and -5.0 (rejected); the reference
    log-probs enter through the precomputed-reference path."""
    from transformers.modeling_outputs import CausalLMOutput
    from trl import DPOTrainer

    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training

    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path) +
                      ["dpo.beta=0.1", "dpo.precompute_ref_log_probs=true"])
    model, tok = load_for_training(cfg, "hf")
    rows = records.to_dpo_rows(records.load_examples(tiny_data / "train.jsonl", 2), "alpaca", tok)
    trainer = DPOTrainer(model=model, args=arguments.dpo_config(cfg, tmp_path, "hf"),
                         train_dataset=stages.to_dataset(rows), eval_dataset=stages.to_dataset(rows),
                         processing_class=tok)

    class FixedLogProbs(torch.nn.Module):
        def forward(self, input_ids, **_):
            logp = torch.tensor([-2.0, -5.0])  # log-prob of token 1 after token 0: chosen, rejected
            logits = torch.zeros(2, 2, 2)
            logits[:, 0, 1] = logp
            logits[:, 0, 0] = torch.log1p(-torch.exp(logp))
            return CausalLMOutput(logits=logits)

    inputs = {"input_ids": torch.tensor([[0, 1], [0, 1]]),
              "attention_mask": torch.ones(2, 2, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1], [0, 1]]),
              "ref_chosen_logps": torch.tensor([-2.5]), "ref_rejected_logps": torch.tensor([-4.5])}
    loss = trainer.compute_loss(FixedLogProbs(), inputs)
    assert loss.item() == pytest.approx(0.644397, abs=1e-6)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1 * ((-2.0 + 2.5) - (-5.0 + 4.5))))),
                                        abs=1e-6)
    logged = trainer._metrics["train" if trainer.model.training else "eval"]
    assert logged["rewards/chosen"][-1] == pytest.approx(0.05, abs=1e-6)
    assert logged["rewards/rejected"][-1] == pytest.approx(-0.05, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Resume

def _interrupt_at(step: int):
    """A callback that stops training like Ctrl-C right after checkpoint-<step> is written."""
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    return Interrupt()


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_resume_matches_uninterrupted_run(stage, request, tiny_data, tiny_model, tmp_path, sft_run):
    straight = request.getfixturevalue("sft_run" if stage == "sft" else "dpo_from_sft")
    script = stages.run_sft if stage == "sft" else stages.run_dpo
    extra = [] if stage == "sft" else ["dpo.init=sft", f"dpo.sft_adapter={sft_run / 'sft'}"]
    with pytest.raises(KeyboardInterrupt):
        run(script, tiny_data, tiny_model, tmp_path, *extra, callbacks=[_interrupt_at(4)])
    assert (tmp_path / stage / "checkpoint-4").is_dir() and not (tmp_path / stage / "metrics.json").exists()
    run(script, tiny_data, tiny_model, tmp_path, *extra, "--resume")
    m, m_straight = metrics(tmp_path / stage), metrics(straight / stage)
    assert m["resumed_from"].endswith("checkpoint-4") and m["steps"] == 8
    # the figures too: the whole run's loss and tokens, not only the resumed half's
    assert m["final_train_loss"] == pytest.approx(m_straight["final_train_loss"], rel=1e-4)
    assert m["tokens"] == m_straight["tokens"] > 0
    assert [h["loss"] for h in m["train_history"]] == pytest.approx(
        [h["loss"] for h in m_straight["train_history"]], rel=1e-4)
    # TRL's own token counter continues from the checkpoint instead of restarting at 0
    assert [h.get("num_tokens") for h in m["train_history"]] == \
        [h.get("num_tokens") for h in m_straight["train_history"]]
    assert m["final_eval"]["eval_loss"] == pytest.approx(m_straight["final_eval"]["eval_loss"], rel=1e-4)
    a, b = adapter_weights(straight / stage), adapter_weights(tmp_path / stage)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # the resumed run trained the second half: its weights differ from the checkpoint it started from
    ckpt = adapter_weights(tmp_path / stage / "checkpoint-4")
    assert any(not torch.equal(ckpt[k], b[k]) for k in a)


def test_a_resume_finishes_after_its_checkpoint_rotated_away(sft_run, tiny_data, tiny_model, tmp_path):
    """With more saves to come than save_total_limit keeps, the checkpoint a resume started from is deleted
    before the run ends: what the metrics need from it is read before training, so the stage still
    finishes, and its metrics.json equals the uninterrupted run's."""
    ckpt = ["train.save_steps=1", "train.save_total_limit=2"]  # saves at 3..8 after the resume: 6 > 2 + 1
    with pytest.raises(KeyboardInterrupt):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path, *ckpt, callbacks=[_interrupt_at(2)])
    run(stages.run_sft, tiny_data, tiny_model, tmp_path, *ckpt, "--resume")
    assert not (tmp_path / "sft" / "checkpoint-2").exists()  # rotated away during the resumed run
    m, m_straight = metrics(tmp_path / "sft"), metrics(sft_run / "sft")
    assert m["resumed_from"].endswith("checkpoint-2") and m["steps"] == m_straight["steps"] == 8
    assert m["final_train_loss"] == pytest.approx(m_straight["final_train_loss"], rel=1e-4)
    assert m["tokens"] == m_straight["tokens"]
    assert [h["loss"] for h in m["train_history"]] == pytest.approx(
        [h["loss"] for h in m_straight["train_history"]], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Refusals and bad input: all before any model is loaded

def test_malformed_train_file_names_file_and_line(tiny_data, tiny_model, tmp_path):
    lines = (tiny_data / "train.jsonl").read_text().splitlines()[:4]
    lines[2] = lines[2][:40]  # truncated JSON on line 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{bad}:3: not valid JSON"):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}")
    assert not (tmp_path / "run").exists()  # failed before the run folder (and the model)


def test_imbalanced_train_file_warns_loudly(tiny_data, tiny_model, sft_run, tmp_path, capsys):
    exs = records.load_examples(tiny_data / "train.jsonl")
    all_a = [e if e.label == "A" else records.swap(e) for e in exs]
    path = tmp_path / "all_a.jsonl"
    files.write_jsonl(path, [records.to_record(e) for e in all_a])
    # pointed at the finished run, main stops right after validating the data: cheap, and it shows
    # the warning comes first
    with pytest.raises(UserError, match="already holds a finished run"):
        run(stages.run_sft, tiny_data, tiny_model, sft_run, f"data.train_file={path}")
    err = capsys.readouterr().err
    assert "WARNING" in err and "Option A is the answer in 32/32" in err


def test_refuses_to_overwrite_finished_run(tiny_data, tiny_model, sft_run):
    before = (sft_run / "sft" / "metrics.json").read_text()
    with pytest.raises(UserError, match="--overwrite"):
        run(stages.run_sft, tiny_data, tiny_model, sft_run)
    with pytest.raises(UserError, match="nothing to resume"):
        run(stages.run_sft, tiny_data, tiny_model, sft_run, "--resume")
    assert (sft_run / "sft" / "metrics.json").read_text() == before


def test_resume_with_nothing_to_resume_says_so(tiny_data, tiny_model, tmp_path):
    with pytest.raises(UserError, match="no checkpoint-N folder"):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path, "--resume")


def test_unfinished_run_needs_resume_or_overwrite(tiny_data, tiny_model, tmp_path):
    (tmp_path / "sft" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(UserError, match="unfinished run"):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path)


def test_unknown_config_key_rejected(tiny_data, tiny_model, tmp_path):
    with pytest.raises(UserError, match="unknown config key 'sft.learning_rat'.*sft.learning_rate"):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path, "sft.learning_rat=1e-4")


def test_dpo_from_sft_without_adapter_says_train_sft_first(tiny_data, tiny_model, tmp_path):
    with pytest.raises(UserError, match="train_sft.py"):
        run(stages.run_dpo, tiny_data, tiny_model, tmp_path, "dpo.init=sft")
    assert not (tmp_path / "dpo").exists()


def test_trainer_args_cpu_flags_and_optim_fallback(tiny_cfg, capsys):
    if torch.cuda.is_available():
        pytest.skip("CPU flags")
    tiny_cfg["train"]["optim"] = "adamw_8bit"
    args = arguments.trainer_args(tiny_cfg, "dpo", Path("x"), "hf", False)
    assert args["use_cpu"] and not args["bf16"] and not args["fp16"]
    assert args["optim"] == "adamw_torch" and "needs a CUDA GPU" in capsys.readouterr().out
    assert args["report_to"] == "none" and args["eval_strategy"] == "steps"
    assert args["learning_rate"] == tiny_cfg["dpo"]["learning_rate"]
    assert args["max_length"] == tiny_cfg["model"]["max_seq_length"]
    assert args["include_num_input_tokens_seen"] == "non_padding"
    unsloth = arguments.trainer_args(tiny_cfg, "sft", Path("x"), "unsloth", False)
    assert unsloth["gradient_checkpointing"] is False


@pytest.mark.parametrize("capability, bf16, fp16", [((8, 6), True, False), ((7, 5), False, True),
                                                    ((9, 0), True, False)])
def test_precision_flags_follow_the_model_dtype(tiny_cfg, capability, bf16, fp16):
    """The trainer's flags come from backends.compute_dtype, like the loaded model: a T4 (7.5) gets fp16
    even though torch.cuda.is_bf16_supported() says True there (emulated)."""
    assert arguments.precision_flags(tiny_cfg, capability) == {"bf16": bf16, "fp16": fp16}
    tiny_cfg["model"]["dtype"] = "float16"
    assert arguments.precision_flags(tiny_cfg, (8, 6)) == {"bf16": False, "fp16": True}
    tiny_cfg["model"]["dtype"] = "float32"
    assert arguments.precision_flags(tiny_cfg, (8, 6)) == {"bf16": False, "fp16": False}
    assert arguments.precision_flags(tiny_cfg, None) == {"use_cpu": True, "bf16": False, "fp16": False}


def test_tokens_come_from_num_input_tokens_seen():
    """Under Unsloth TRL's num_tokens is never logged (its compute_loss replacement skips it), and on
    resume it restarts from 0; transformers' count is logged under both and checkpointed."""
    assert run_metrics.trained_tokens({"loss": 1.0, "num_tokens": 60.0, "num_input_tokens_seen": 120}) == \
        (120, "num_input_tokens_seen")
    assert run_metrics.trained_tokens({"loss": 1.0, "num_tokens": 60.0}) == (60.0, "num_tokens")
    unsloth_log = {"loss": 1.0, "num_input_tokens_seen": 96, "step": 3}
    assert run_metrics.trained_tokens(unsloth_log) == (96, "num_input_tokens_seen")
    assert run_metrics.trained_tokens({"loss": 1.0}) == (None, None)

    class Trainer:  # a log history as an Unsloth SFT run writes it
        class state:
            global_step, epoch = 2, 1.0
            log_history = [{"loss": 2.0, "num_input_tokens_seen": 50, "step": 1},
                           {"loss": 1.5, "num_input_tokens_seen": 100, "step": 2},
                           {"train_runtime": 4.0, "train_loss": 1.75, "step": 2}]

    m = run_metrics.collect_metrics(Trainer(), 5.0, run_metrics.checkpoint_state(None))
    assert m["tokens"] == 100 and m["tokens_per_second"] == 25.0
    assert m["tokens_source"] == "num_input_tokens_seen"


def test_step_timer_counts_tokens_without_trl_num_tokens(tmp_path):
    """bench_train's step timer reads the same fallback (its SFT ratio needs tokens under Unsloth)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    timer = bench_train._step_timer(tmp_path / "t.json")
    timer.on_step_end(None, type("S", (), {"global_step": 1})(), None)
    timer.on_log(None, type("S", (), {"global_step": 1})(), None, logs={"loss": 1.0,
                                                                        "num_input_tokens_seen": 64})
    assert timer.steps[1]["num_tokens"] == 64


def test_oom_becomes_advice():
    class Boom:
        state = None

        def add_callback(self, callback):
            pass

        def train(self, resume_from_checkpoint=None):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(UserError, match="train.batch_size.*train.grad_accum.*max_seq_length"):
        stages.train(Boom())


@pytest.mark.parametrize("loss_type", [["ipo"], ["hinge"], ["sigmoid", "sft"]])
def test_dpo_loss_types_pass_through_to_trl(loss_type, tiny_data, tiny_model, tmp_path):
    """Each configured loss reaches TRL and trains: the loss differs by type, the policy moves."""
    out = run(stages.run_dpo, tiny_data, tiny_model, tmp_path, "dpo.init=base", "dpo.max_steps=2",
              f"dpo.loss_type={json.dumps(loss_type)}", "train.eval_steps=100")
    m = metrics(out / "dpo")
    assert m["loss_type"] == loss_type
    first = m["train_history"][0]["loss"]
    assert math.isfinite(first)
    # at init policy == reference, so each loss starts at its own known value
    expected = {"ipo": (1 / (2 * 0.1)) ** 2, "hinge": 1.0}.get(loss_type[0])
    if expected is not None and len(loss_type) == 1:
        assert first == pytest.approx(expected, rel=1e-3)
    if loss_type == ["sigmoid", "sft"]:
        assert first > math.log(2) + 0.1  # the NLL term adds to sigmoid's log 2
    b = {k: v for k, v in adapter_weights(out / "dpo").items() if "lora_B" in k}
    assert b and any(v.abs().max() > 0 for v in b.values())


def test_resume_auto_continues_starts_fresh_or_leaves_finished(tiny_data, tiny_model, tmp_path, sft_run,
                                                              capsys):
    """resume=auto (the notebook's cells): the same command after a disconnect continues, on a fresh folder
    starts, and on a finished stage does nothing."""
    with pytest.raises(KeyboardInterrupt):
        run(stages.run_sft, tiny_data, tiny_model, tmp_path, callbacks=[_interrupt_at(4)])
    run(stages.run_sft, tiny_data, tiny_model, tmp_path, "resume=auto")
    assert metrics(tmp_path / "sft")["resumed_from"].endswith("checkpoint-4")
    # the config the stage saved is the user's as given: resume=auto, not "a checkpoint was found"
    assert yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())["resume"] == "auto"
    a, b = adapter_weights(sft_run / "sft"), adapter_weights(tmp_path / "sft")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    before = (tmp_path / "sft" / "metrics.json").read_text()
    capsys.readouterr()
    run(stages.run_sft, tiny_data, tiny_model, tmp_path, "resume=auto")
    assert "finished already" in capsys.readouterr().out
    assert (tmp_path / "sft" / "metrics.json").read_text() == before
    fresh = tmp_path / "fresh"
    run(stages.run_sft, tiny_data, tiny_model, fresh, "resume=auto")
    assert metrics(fresh / "sft")["resumed_from"] is None and metrics(fresh / "sft")["initial_eval"]
