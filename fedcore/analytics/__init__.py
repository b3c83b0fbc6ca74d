"""Federated statistics under DP."""
