"""On-policy preference pairs: answers sampled from the SFT model, judged by the data (data.judge)."""
