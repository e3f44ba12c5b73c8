"""Training: the SFT and DPO stages on TRL's trainers, their shared glue, health checks, several processes."""
