"""Preflight: verify_setup.py's checks of the machine, the inputs and (optionally) a smoke run."""
