"""verify_setup.py's flow: every check in its order, the table, and the exit status."""
from __future__ import annotations

from dporec.preflight import environment as env
from dporec.preflight import inputs
from dporec.preflight.smoke import check_smoke
from dporec.preflight.table import FAIL, OK, WARN, Ctx, format_rows, run_checks, symbols


def verify(cfg: dict, config_path: str, smoke: bool = False, for_eval: bool = False) -> int:
    """Print one row per check; 1 when any check failed, else 0."""
    import torch
    ctx = Ctx(cfg=cfg, config_path=config_path, for_eval=for_eval, cuda=torch.cuda.is_available())
    # check_backend first: on a GPU it imports Unsloth, which must precede transformers/peft.
    checks = [env.check_python, env.check_backend, env.check_packages, env.check_gpu, env.check_xformers,
              env.check_bnb_4bit, inputs.check_model, inputs.check_memory, env.check_needs_gpu,
              inputs.check_data, inputs.check_lengths, inputs.check_disk, inputs.check_adapters,
              inputs.check_time]
    if smoke:
        checks.append(check_smoke)
    print(f"verify_setup: {config_path}" + (" (for evaluation)" if for_eval else ""))
    rows = run_checks(checks, ctx)
    marks = symbols()
    print(format_rows(rows, marks))
    n = {s: sum(r[0] == s for r in rows) for s in (OK, WARN, FAIL)}
    print(f"\n{n[OK]} passed, {n[WARN]} warnings, {n[FAIL]} failed")
    if n[FAIL]:
        print(f"{marks[FAIL]} fix the failed checks above before running the experiment.")
        return 1
    print("ready: python run_experiment.py --config " + config_path)
    return 0
