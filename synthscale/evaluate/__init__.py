"""Evaluation: in-domain probes, quality and prompt-following metrics, sampling speed."""
