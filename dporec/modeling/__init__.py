"""Modeling: hardware rules, the two backends (Unsloth, transformers + PEFT), adapters, local models."""
