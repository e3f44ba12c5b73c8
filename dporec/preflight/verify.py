"""verify_setup.py's flow: the process setup a run would make, every check, the table, and the exit status."""
from __future__ import annotations

import logging
from pathlib import Path

from dporec.preflight import environment as env
from dporec.preflight import inputs
from dporec.preflight.smoke import check_smoke
from dporec.preflight.table import FAIL, OK, WARN, Facts, format_rows, run_checks, symbols

log = logging.getLogger(__name__)
CHECKS = (env.check_python, env.check_backend, env.check_packages, env.check_gpu, env.check_xformers,
          env.check_bnb_4bit, inputs.check_model, inputs.check_trainer_names, inputs.check_memory,
          env.check_needs_gpu,
          inputs.check_data, inputs.check_lengths, inputs.check_disk, inputs.check_adapters,
          inputs.check_time)


def verify(cfg: dict, config_path: str, smoke: bool = False, for_eval: bool = False,
           utilisation: Path | None = None) -> int:
    """Report one row per check; 1 when any check failed, else 0."""
    import torch
    facts = Facts(cfg=cfg, config_path=config_path, for_eval=for_eval, cuda=torch.cuda.is_available(),
                  utilisation=utilisation)
    facts.setup()  # first: on a GPU it imports Unsloth, which must precede transformers and PEFT
    checks = [*CHECKS, *([check_smoke] if smoke else [])]
    log.info(f"verify_setup: {config_path}" + (" (for evaluation)" if for_eval else ""))
    rows = run_checks(checks, facts)
    marks = symbols()
    log.info(format_rows(rows, marks))
    n = {s: sum(r[0] == s for r in rows) for s in (OK, WARN, FAIL)}
    log.info(f"\n{n[OK]} passed, {n[WARN]} warnings, {n[FAIL]} failed")
    if n[FAIL]:
        log.info(f"{marks[FAIL]} fix the failed checks above before running the experiment.")
        return 1
    log.info("ready: python run_experiment.py --config " + config_path)
    return 0
